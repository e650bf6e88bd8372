"""OSDFace's visual representation embedder (VRE): LQ image -> (B, 77, 1024) UNet context.

Architecture as released with OSDFace (`lq_embed/`), re-implemented here with the
same parameter names so the released `associate_2.ckpt` (`vqvae_LQ.*`) and
`embedding_change_weights.pth` load strictly:

- `vqvae.encoder`: a VQGAN-style encoder (conv_in; per level `num_res_blocks` residual blocks
  with GroupNorm + SiLU, single-head spatial self-attention at the `attn_resolutions`, a strided
  conv down-sampler with asymmetric (0,1,0,1) padding; mid block res-attn-res; norm, SiLU,
  conv_out to `z_channels`). SD-VAE encoders differ in names and layout, hence a module of its own;
- `vqvae.quant_conv` (1x1) and `vqvae.quantize.embedding` (the LQ dictionary, 1024 x 512);
- token selection: every latent position takes its nearest code; positions are ordered by that
  distance and the first `n_tokens` (77) *distinct* codes are kept, in that order; if fewer
  distinct codes exist the remaining tokens are zero (as OSDFace's one-hot matrix leaves them);
- `embedding_change`: two 1x1 Conv1d with SiLU (512 -> 256 -> 1024), OSDFace's `TwoLayerConv1x1`.

Deliberate difference: OSDFace's selection takes the minimum over the whole batch inside its
per-image loop and so is only correct for batch size 1; here the selection is done per image
(batched), so any batch size gives each image the tokens it would get alone.

The input normalisation is OSDFace's, kept bit-exact because the VRE was trained with it: the LQ
image in [-1, 1] is resized bilinearly to `resolution` and normalised again with (x - 0.5) / 0.5.
The VRE stays full precision (it is not a quantization target), as in QuantFace.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_VRE: dict[str, Any] = {
    "resolution": 512,
    "ch": 64,
    "ch_mult": [1, 2, 2, 2, 4, 8],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "z_channels": 512,
    "n_embed": 1024,
    "embed_dim": 512,
    "n_tokens": 77,
    "norm_groups": 32,
    "head_size": 1,
    "context_dim": 1024,
}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, 1x1 shortcut when the width changes (no timestep input)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return skip + h


class AttnBlock(nn.Module):
    """Spatial self-attention with 1x1-conv projections; `norm2` exists in the checkpoint (it
    normalises an optional cross input the encoder never passes) and is kept for strict loading."""

    def __init__(self, channels: int, groups: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = _norm(channels, groups)
        self.norm2 = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm1(x)
        d = c // self.heads

        def split(t: Tensor) -> Tensor:  # (B, heads, HW, d)
            return t.reshape(b, self.heads, d, h * w).transpose(2, 3)

        q, k, v = split(self.q(n)), split(self.k(n)), split(self.v(n))
        attn = torch.softmax((q * d**-0.5) @ k.transpose(2, 3), dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VQEncoder(nn.Module):
    """The LQ VQ encoder trunk (parameter names as in OSDFace's `MultiHeadEncoder`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        ch, mult, g = cfg["ch"], list(cfg["ch_mult"]), cfg["norm_groups"]
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        res = cfg["resolution"]
        widths = [ch] + [ch * m for m in mult]
        self.down = nn.ModuleList()
        for level in range(len(mult)):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            cin, cout = widths[level], widths[level + 1]
            for _ in range(cfg["num_res_blocks"]):
                stage.block.append(ResBlock(cin, cout, g))
                cin = cout
                if res in cfg["attn_resolutions"]:
                    stage.attn.append(AttnBlock(cout, g, cfg["head_size"]))
            if level != len(mult) - 1:
                stage.downsample = Downsample(cout)
                res //= 2
            self.down.append(stage)
        top = widths[-1]
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(top, top, g)
        self.mid.attn_1 = AttnBlock(top, g, cfg["head_size"])
        self.mid.block_2 = ResBlock(top, top, g)
        self.norm_out = _norm(top, g)
        self.conv_out = nn.Conv2d(top, cfg["z_channels"], 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class TokenSelector(nn.Module):
    """Nearest-code lookup in the LQ dictionary and OSDFace's distinct-token selection."""

    def __init__(self, n_embed: int, embed_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.n_tokens = n_tokens

    def forward(self, z: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, n_tokens, C), each image on its own (no batch coupling)."""
        b, c = z.shape[:2]
        flat = z.flatten(2).transpose(1, 2)  # (B, N, C)
        book = self.embedding.weight
        dist = (
            flat.pow(2).sum(-1, keepdim=True) + book.pow(2).sum(-1) - 2 * flat @ book.t()
        )  # (B, N, K): the same expansion OSDFace uses, so ties break the same way
        dmin, code = dist.min(dim=-1)  # (B, N)
        n, k = dmin.shape[1], book.shape[0]
        if torch.onnx.is_in_onnx_export():
            first, chosen = _select_for_export(dmin, code, k, self.n_tokens)
        else:
            order = torch.sort(dmin, dim=1, stable=True).indices
            seq = code.gather(1, order)  # codes in order of increasing distance
            pos = torch.arange(n, device=z.device).expand(b, n)
            first = torch.full((b, k), n, dtype=torch.long, device=z.device)
            first = first.scatter_reduce(1, seq, pos, reduce="amin")  # first rank of each code
            chosen = first.argsort(dim=1, stable=True)[:, : self.n_tokens]
        valid = first.gather(1, chosen) < n  # fewer distinct codes than tokens -> zero rows
        tokens = book[chosen] * valid[..., None].to(book.dtype)
        if tokens.shape[1] < self.n_tokens:  # a dictionary smaller than the token count
            pad = tokens.new_zeros(b, self.n_tokens - tokens.shape[1], c)
            tokens = torch.cat([tokens, pad], dim=1)
        return tokens


def _select_for_export(dmin: Tensor, code: Tensor, k: int, n_tokens: int) -> tuple[Tensor, Tensor]:
    """(first rank of each code, chosen codes): the same selection in operators the ONNX exporter has (opset 17): no stable sort, no
    scatter-min. Sorting becomes TopK, which ONNX defines to put the lower index first on ties,
    as a stable sort does; each code's first rank is a dense min over the positions holding it.
    Codes that never occur all rank n and are zeroed by `valid`, so their order is immaterial."""
    n = dmin.shape[1]
    order = torch.topk(dmin, n, dim=1, largest=False, sorted=True).indices
    seq = code.gather(1, order)
    codes = torch.arange(k, device=code.device)
    pos = torch.arange(n, device=code.device).view(1, n, 1)
    first = torch.where(seq.unsqueeze(-1) == codes, pos, n).amin(dim=1)  # (B, K)
    chosen = torch.topk(first, min(n_tokens, k), dim=1, largest=False, sorted=True).indices
    return first, chosen


class EmbeddingChange(nn.Module):
    """OSDFace's `TwoLayerConv1x1`: tokens (B, T, C) -> (B, T, context_dim)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cin // 2, 1)
        self.conv2 = nn.Conv1d(cin // 2, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.conv1(x.transpose(1, 2)))
        return F.silu(self.conv2(h)).transpose(1, 2)


class VQVAEEncoder(nn.Module):
    """`vqvae_LQ` without its decoder: encoder, quant_conv, quantize (the dictionary)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = VQEncoder(cfg)
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["embed_dim"], 1)
        self.quantize = TokenSelector(cfg["n_embed"], cfg["embed_dim"], cfg["n_tokens"])

    def forward(self, x: Tensor) -> Tensor:
        return self.quantize(self.quant_conv(self.encoder(x)))


class OSDFaceVRE(nn.Module):
    """LQ image in [0, 1] -> visual prompt (B, n_tokens, context_dim)."""

    def __init__(self, cfg: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = {**DEFAULT_VRE, **(cfg or {})}
        self.vqvae = VQVAEEncoder(self.cfg)
        self.embedding_change = EmbeddingChange(self.cfg["embed_dim"], self.cfg["context_dim"])

    def forward(self, lq: Tensor) -> Tensor:
        r = self.cfg["resolution"]
        x = lq * 2 - 1  # OSDFace feeds the VRE the [-1, 1] image ...
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5  # ... and normalises it once more (trained that way)
        return self.embedding_change(self.vqvae(x))
