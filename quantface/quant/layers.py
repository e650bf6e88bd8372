"""Quantized drop-in layers and the wrap/unwrap of a whole model.

`QuantLinear`/`QuantConv2d` subclass the torch layers they replace (so every attribute diffusers
reads, e.g. `in_channels`, is still there) and quantize the weight and the input on the fly.
`QuantMatMul` quantizes both operands of an activation-activation product; `QuantAttnProcessor` is
a diffusers attention processor that computes attention with two of them (QK^T and AV), so the
attention matmuls are quantized inside diffusers' own `Attention` modules without forking them.

Which layer gets which quantizers is a *layout*: name -> `LayerQuant`. The layout is plain data,
saved in the checkpoint, so a quantized model is rebuilt exactly on load.

A layer may also carry an *input transform* (`InputTransform`, part of its layout) that a method
could not fold into neighbouring weights: a per-channel shift and division of the input
(PassionSR's equivalent transformation, run-time smoothing), an online randomized Hadamard of the
input channels (QuaRot; per pixel for a conv), and a 16-bit low-rank branch reading the
transformed, unquantized input (SVDQuant):

    x' = H((x - d) / s);   y = conv_or_linear(Q_a(x'), Q_w(W)) + b + W_fp d + up(down(x'))

The shift's output correction is `conv_or_linear(d broadcast over the input, W_fp)`. For a Linear,
an unpadded conv or a conv padded by replication it is a constant per output channel, a saved
FP32 vector (`shift_bias`). A zero-padded conv sees the padding zeros unshifted, so near the
borders fewer taps see d: there the correction is the map `sum_ab M[o,a,b] R_a[i] C_b[j]` with the
saved per-tap sums `M = W_fp d` (`shift_taps`, [O, kh, kw]) and R/C the 0/1 masks of taps that fall
inside the input. It is computed per call from the input size, exactly the official PassionSR
correction `conv(d.expand_as(x), W)` at O kh kw positions' cost instead of a second convolution.

A matmul site may carry a *contraction-dim scale* s (`inner_scale`, PassionSR's attention LET):
`Q_a(a diag(s)) @ Q_b(diag(s)^-1 b)`, exactly `a @ b` before quantization. For QK^T the
contraction runs over the head dim (q s, k / s), for AV over the key tokens (P s, V / s).

A layer may also *split* its input channels in two (Q-Diffusion's shortcut-splitting quantizer
for the decoder's concatenated skips): channels [:split] and [split:] then have their own
activation quantizer and their own (per-output-channel) weight quantizer over W[:, :split] and
W[:, split:] (`act_quantizer_1`, `weight_quantizer_1`).

The layout says which parts exist; their values (s, Hadamard signs, branch weights) are buffers
and parameters in the state dict, so save/load stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from quantface.quant.hadamard import randomized_hadamard
from quantface.quant.quantizer import QuantSpec, UniformQuantizer

MATMUL_SITES = ("qk_matmul", "av_matmul")
TRANSFORM_MODULES = ("input_hadamard", "lowrank")


@dataclass(frozen=True)
class InputTransform:
    """Which run-time input transforms a Linear/Conv2d site carries (plain data)."""

    scale: bool = False  # divide input channel j by a saved s_j
    hadamard: bool = False  # online randomized Hadamard over the input channels
    lowrank: int = 0  # rank of the 16-bit low-rank branch (0: none)
    shift: bool = False  # subtract a saved d_j from input channel j (before the division)
    inner: int = 0  # matmul sites: length of the contraction-dim scale (0: none)

    @property
    def active(self) -> bool:
        return self.scale or self.hadamard or self.lowrank > 0 or self.shift or self.inner > 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "scale": self.scale,
            "hadamard": self.hadamard,
            "lowrank": self.lowrank,
        }
        if self.shift:  # only when used: layouts written before shifts existed stay identical
            d["shift"] = True
        if self.inner:
            d["inner"] = self.inner
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> InputTransform:
        return cls(**(d or {}))


@dataclass(frozen=True)
class LayerQuant:
    """Quantizer specs of one site. For a matmul, `w` is the second operand's spec."""

    kind: str  # "linear" | "conv2d" | "matmul"
    a: QuantSpec
    w: QuantSpec
    transform: InputTransform = InputTransform()
    split: int = 0  # >0: input channels [:split] and [split:] are quantized separately

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "a": self.a.to_dict(), "w": self.w.to_dict()}
        if self.transform.active:
            d["transform"] = self.transform.to_dict()
        if self.split:
            d["split"] = self.split
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerQuant:
        return cls(
            d["kind"],
            QuantSpec.from_dict(d["a"]),
            QuantSpec.from_dict(d["w"]),
            InputTransform.from_dict(d.get("transform")),
            int(d.get("split", 0)),
        )


class OnlineHadamard(nn.Module):
    """x -> x diag(signs) H_n / sqrt(n) along the channel dim (randomized Hadamard, run time)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("signs", torch.ones(n))

    def forward(self, x: Tensor, dim: int) -> Tensor:
        return randomized_hadamard(x, self.signs, dim)

    def matrix(self) -> Tensor:
        """The explicit rotation (rows: input channel, cols: rotated channel)."""
        eye = torch.eye(self.signs.numel(), dtype=torch.float64, device=self.signs.device)
        return randomized_hadamard(eye, self.signs.double(), -1)


class LowRankBranch(nn.Module):
    """up(down(x)): Linear I->r->O, or a kh x kw conv I->r (host's stride/padding) then 1x1 r->O.

    Deliberately not an nn.Linear/nn.Conv2d, so it is never mistaken for a quantization site; its
    weights are 16-bit values (FP16-rounded, computed in FP32 like all simulation).
    """

    def __init__(self, host: nn.Module, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.conv = isinstance(host, nn.Conv2d)
        out_ch = host.weight.shape[0]
        if self.conv:
            if host.groups != 1:
                raise ValueError("a low-rank branch needs an ungrouped conv")
            kh, kw = host.kernel_size
            self.down = nn.Parameter(torch.zeros(rank, host.in_channels, kh, kw))
            self.up = nn.Parameter(torch.zeros(out_ch, rank, 1, 1))
            self.stride, self.padding, self.dilation = host.stride, host.padding, host.dilation
        else:
            self.down = nn.Parameter(torch.zeros(rank, host.in_features))
            self.up = nn.Parameter(torch.zeros(out_ch, rank))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:
            h = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
            return F.conv2d(h, self.up)
        return F.linear(F.linear(x, self.down), self.up)

    def set_factors(self, l1: Tensor, l2: Tensor) -> None:
        """From a split W = L1 [O, r] @ L2 [r, fan_in] + R."""
        with torch.no_grad():
            self.up.copy_(l1.reshape(self.up.shape))
            self.down.copy_(l2.reshape(self.down.shape))

    def matrix(self) -> Tensor:
        """L1 @ L2 as a weight-shaped tensor (conv: [O, I, kh, kw])."""
        w = self.up.reshape(self.up.shape[0], -1) @ self.down.reshape(self.rank, -1)
        return w.reshape(self.up.shape[0], *self.down.shape[1:])


class QuantLayerMixin:
    """Shared by QuantLinear/QuantConv2d: build from a float layer and back, exactly."""

    act_quantizer: UniformQuantizer
    weight_quantizer: UniformQuantizer
    float_cls: type[nn.Module]

    channel_dim: int  # of the input: -1 for Linear, 1 for Conv2d
    split: int = 0  # see the module docstring (split shortcut quantizer)

    @classmethod
    def from_float(cls, mod: nn.Module, lq: LayerQuant) -> nn.Module:
        q = cls.__new__(cls)
        q.__dict__.update(mod.__dict__)
        q._parameters = dict(mod._parameters)  # same Parameter objects: no copy, exact weights
        q._buffers = dict(mod._buffers)
        q._modules = dict(mod._modules)
        q.act_quantizer = UniformQuantizer(lq.a)
        q.weight_quantizer = UniformQuantizer(lq.w)
        if lq.split:
            n_in = mod.weight.shape[1] * getattr(mod, "groups", 1)
            if getattr(mod, "groups", 1) != 1 or not 0 < lq.split < n_in:
                raise ValueError(f"split {lq.split} needs an ungrouped layer with > split inputs")
            q.split = lq.split
            q.act_quantizer_1 = UniformQuantizer(lq.a)
            q.weight_quantizer_1 = UniformQuantizer(lq.w)
        q.add_transform(lq.transform)
        return q

    def layer_quantizers(self) -> list[tuple[UniformQuantizer, str]]:
        """(quantizer, "act" | "weight") pairs of this layer, split halves included."""
        out = [(self.act_quantizer, "act"), (self.weight_quantizer, "weight")]
        if self.split:
            out += [(self.act_quantizer_1, "act"), (self.weight_quantizer_1, "weight")]
        return out

    def add_transform(self, t: InputTransform) -> None:
        """Create (identity-valued) transform parts; a method or the checkpoint fills them."""
        n = self.weight.shape[1] * getattr(self, "groups", 1)
        dev = self.weight.device
        if t.scale and "input_scale" not in self._buffers:
            self.register_buffer("input_scale", torch.ones(n, device=dev))
        if t.hadamard and "input_hadamard" not in self._modules:
            self.add_module("input_hadamard", OnlineHadamard(n).to(dev))
        if t.lowrank > 0 and "lowrank" not in self._modules:
            self.add_module("lowrank", LowRankBranch(self, t.lowrank).to(dev))
        if t.shift and "input_shift" not in self._buffers:
            self.register_buffer("input_shift", torch.zeros(n, device=dev))
            out = self.weight.shape[0]
            if border_dependent(self):
                self.register_buffer("shift_taps", torch.zeros(out, *self.kernel_size, device=dev))
            else:
                self.register_buffer("shift_bias", torch.zeros(out, device=dev))

    def transform_spec(self) -> InputTransform:
        lr = self._modules.get("lowrank")
        return InputTransform(
            scale="input_scale" in self._buffers,
            hadamard="input_hadamard" in self._modules,
            lowrank=lr.rank if lr is not None else 0,
            shift="input_shift" in self._buffers,
        )

    def _channel_view(self, v: Tensor, ndim: int) -> Tensor:
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return v.view(shape)

    def shift_and_scale(self, x: Tensor) -> Tensor:
        """x -> (x - d) / s: the input transform before the Hadamard (an exporter writes the
        Hadamard its own way)."""
        d = self._buffers.get("input_shift")
        if d is not None:
            x = x - self._channel_view(d, x.dim())
        s = self._buffers.get("input_scale")
        if s is not None:
            x = x / self._channel_view(s, x.dim())
        return x

    def transform_input(self, x: Tensor) -> Tensor:
        """x -> H((x - d) / s), the input the quantizer and the low-rank branch see."""
        x = self.shift_and_scale(x)
        had = self._modules.get("input_hadamard")
        if had is not None:
            x = had(x, self.channel_dim)
        return x

    def _add_branch(self, y: Tensor, x: Tensor) -> Tensor:
        """Add what runs beside the quantized product: the low-rank branch, the shift's W d."""
        lr = self._modules.get("lowrank")
        if lr is not None:
            y = y + lr(x)
        sb = self._buffers.get("shift_bias")
        if sb is not None:
            y = y + self._channel_view(sb, y.dim())
        taps = self._buffers.get("shift_taps")
        if taps is not None:
            y = y + border_shift_map(self, taps, x.shape[-2:], y.shape[-2:])
        return y

    def quantize_input(self, x: Tensor) -> Tensor:
        """Q_a(x), or the two halves quantized separately for a split layer."""
        if not self.split:
            return self.act_quantizer(x)
        dim = self.channel_dim % x.dim()
        a, b = x.split([self.split, x.shape[dim] - self.split], dim=dim)
        return torch.cat([self.act_quantizer(a), self.act_quantizer_1(b)], dim=dim)

    @torch.no_grad()
    def effective_weight(self) -> Tensor:
        """The FP weight W_eff with layer(x) == float_layer(x, W_eff) when quantizers are off.

        W_eff = (R + L1 L2) H^T diag(1/s) over the input channels (exact algebra, FP64).
        """
        w = self.weight.detach().double()
        lr = self._modules.get("lowrank")
        if lr is not None:
            w = w + lr.matrix().double()
        had = self._modules.get("input_hadamard")
        if had is not None:  # y = (x H) W^T -> W_eff = W H^T along the input-channel dim
            w = torch.einsum("oi...,ji->oj...", w, had.matrix().to(w.device))
        s = self._buffers.get("input_scale")
        if s is not None:
            w = w / s.double().view([1, -1] + [1] * (w.dim() - 2))
        return w.to(self.weight.dtype)

    def to_float(self) -> nn.Module:
        """The float layer computing the same function (transforms multiplied into the weight)."""
        mod = self.float_cls.__new__(self.float_cls)
        mod.__dict__.update(self.__dict__)
        mod._parameters = dict(self._parameters)
        if self.transform_spec().active:
            mod._parameters["weight"] = nn.Parameter(
                self.effective_weight(), self.weight.requires_grad
            )
        d = self._buffers.get("input_shift")
        if d is not None:  # W_eff (x - d) + b + W_fp d  ==  W_eff x + (b + W_fp d - W_eff d)
            w_eff = mod._parameters["weight"].detach()
            extra = self._shift_residual(w_eff, d)
            b = self.bias.detach() + extra if self.bias is not None else extra
            mod._parameters["bias"] = nn.Parameter(b.clone(), requires_grad=False)
        transform_buffers = ("input_scale", "input_shift", "shift_bias", "shift_taps")
        mod._buffers = {k: v for k, v in self._buffers.items() if k not in transform_buffers}
        drop = ("act_quantizer", "weight_quantizer", "act_quantizer_1", "weight_quantizer_1")
        mod._modules = {k: v for k, v in self._modules.items() if k not in drop + TRANSFORM_MODULES}
        mod.__dict__.pop("split", None)
        return mod

    def _shift_residual(self, w_eff: Tensor, d: Tensor) -> Tensor:
        """The bias a plain layer with weight W_eff needs for the shift: W_fp d - W_eff d.

        For a zero-padded conv that is a position-dependent map unless W_eff d == W_fp d per tap
        (true while the weight is W_fp diag(s), the only weight a shift is learned with): then it
        is zero, anything else has no plain-conv equivalent and is refused.
        """
        taps = self._buffers.get("shift_taps")
        if taps is None:
            sums = w_eff.flatten(2).sum(-1) if w_eff.dim() > 2 else w_eff
            return self.shift_bias - sums @ d
        residual = taps - shift_taps(w_eff, d)
        if residual.abs().max() > 1e-5 * (taps.abs().max() + 1e-12):
            raise ValueError("a padded conv's shift has no plain-conv form once W_eff d != W_fp d")
        return torch.zeros_like(taps[:, 0, 0])

    def quantized_weight(self) -> Tensor:
        return self.quantize_weight(self.weight)

    def quantize_weight(self, w: Tensor) -> Tensor:
        """Q_w(w) with this layer's weight quantizer(s); methods pass W + (LoRA) deltas."""
        if not self.split:
            return self.weight_quantizer(w)
        return torch.cat(
            [
                self.weight_quantizer(w[:, : self.split]),
                self.weight_quantizer_1(w[:, self.split :]),
            ],
            dim=1,
        )


class QuantLinear(QuantLayerMixin, nn.Linear):
    float_cls = nn.Linear
    channel_dim = -1

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform_input(x)
        y = F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)
        return self._add_branch(y, x)


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    float_cls = nn.Conv2d
    channel_dim = 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform_input(x)
        y = self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)
        return self._add_branch(y, x)


class QuantMatMul(nn.Module):
    """`a @ b` with both operands fake-quantized (attention QK^T and AV).

    With an `inner_scale` s (layout `inner`), a's last dim is multiplied and b's dim -2 divided
    by s before quantization: the product is unchanged, the operands' ranges are balanced.
    """

    def __init__(self, lq: LayerQuant) -> None:
        super().__init__()
        self.act_quantizer = UniformQuantizer(lq.a)  # first operand (Q, or softmax output)
        self.weight_quantizer = UniformQuantizer(lq.w)  # second operand (K^T, or V)
        if lq.transform.inner:
            self.add_inner_scale(lq.transform.inner)

    def add_inner_scale(self, n: int) -> None:
        """Create an identity contraction-dim scale of length n (a method or checkpoint fills it)."""
        if "inner_scale" not in self._buffers:
            dev = self.act_quantizer.scale.device
            self.register_buffer("inner_scale", torch.ones(n, device=dev))

    def transform_spec(self) -> InputTransform:
        s = self._buffers.get("inner_scale")
        return InputTransform(inner=s.numel() if s is not None else 0)

    def layer_quantizers(self) -> list[tuple[UniformQuantizer, str]]:
        """Both operands are activations: `weight_quantizer` names the second one's slot only."""
        return [(self.act_quantizer, "act"), (self.weight_quantizer, "act")]

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        s = self._buffers.get("inner_scale")
        if s is not None:
            if s.numel() != a.shape[-1]:
                raise ValueError(
                    f"this attention's operand scale was learned for {s.numel()} contraction "
                    f"positions, the input has {a.shape[-1]}: run it at the calibration size"
                )
            a, b = a * s, b / s.unsqueeze(-1)
        return torch.bmm(self.act_quantizer(a), self.weight_quantizer(b))


class QuantAttnProcessor:
    """diffusers' classic attention math with the two matmuls routed through `QuantMatMul`.

    Mirrors `diffusers.models.attention_processor.AttnProcessor` (spatial norm, group norm, 4-D
    inputs, cross attention, masks, residual, output rescale) so FP outputs match the SDPA
    processor to float tolerance; only the matmuls differ.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = _matmul(attn, "qk_matmul", query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.float().softmax(dim=-1).to(value.dtype)
        hidden_states = _matmul(attn, "av_matmul", probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _matmul(attn: Attention, site: str, a: Tensor, b: Tensor) -> Tensor:
    """The site's QuantMatMul when it is quantized, a plain matmul when it is not in the layout."""
    mm = getattr(attn, site, None)
    return mm(a, b) if mm is not None else torch.bmm(a, b)


def _left_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Zeros added before row 0 / column 0 (torch's "same" puts the odd one after)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return tuple(conv.padding)


def border_dependent(mod: nn.Module) -> bool:
    """A zero-padded conv: a constant input shift's output correction varies near the borders."""
    if not isinstance(mod, nn.Conv2d) or mod.padding_mode != "zeros":
        return False
    if mod.padding == "same":
        return any(k > 1 for k in mod.kernel_size)
    return any(p != 0 for p in _left_padding(mod))


def shift_taps(w: Tensor, d: Tensor) -> Tensor:
    """Per-tap sums M[o, a, b] = sum_c W[o, c, a, b] d_c of a conv weight and an input shift."""
    return torch.einsum("ocab,c->oab", w, d)


def _inside(conv: nn.Conv2d, axis: int, n_in: int, n_out: int, like: Tensor) -> Tensor:
    """[k, n_out] 0/1: does tap a of output position i read a real input (not padding)?"""
    k, s, dil = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    out_pos = torch.arange(n_out, device=like.device) * s - _left_padding(conv)[axis]
    pos = out_pos[None, :] + torch.arange(k, device=like.device)[:, None] * dil
    return ((pos >= 0) & (pos < n_in)).to(like.dtype)


def border_shift_map(
    conv: nn.Conv2d, taps: Tensor, in_hw: torch.Size, out_hw: torch.Size
) -> Tensor:
    """conv(d broadcast to an in_hw image, W) with zero padding, from the tap sums: [O, H', W'].

    Separable because the padding mask of tap (a, b) at (i, j) is rows[a, i] * cols[b, j].
    """
    rows = _inside(conv, 0, in_hw[0], out_hw[0], taps)
    cols = _inside(conv, 1, in_hw[1], out_hw[1], taps)
    return torch.einsum("oab,ai,bj->oij", taps, rows, cols)


def quant_sites(root: nn.Module, prefixes: tuple[str, ...]) -> dict[str, str]:
    """All quantizable sites under the given sub-module prefixes: name -> kind.

    Linear and Conv2d layers are sites; every diffusers `Attention` adds two matmul sites
    `<attn>.qk_matmul` and `<attn>.av_matmul`.
    """
    sites: dict[str, str] = {}
    for name, mod in root.named_modules():
        if not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        if isinstance(mod, QuantMatMul):
            continue
        if isinstance(mod, nn.Linear):
            sites[name] = "linear"
        elif isinstance(mod, nn.Conv2d):
            sites[name] = "conv2d"
        elif isinstance(mod, Attention):
            for site in MATMUL_SITES:
                sites[f"{name}.{site}"] = "matmul"
    return sites


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


_QUANT_CLS = {"linear": QuantLinear, "conv2d": QuantConv2d}
_QUANT_PROCESSOR = QuantAttnProcessor()


def wrap_model(root: nn.Module, layout: dict[str, LayerQuant]) -> None:
    """Replace every site named in `layout` by its quantized counterpart, in place."""
    for name, lq in layout.items():
        parent, attr = _parent(root, name)
        if lq.kind == "matmul":
            if not isinstance(parent, Attention):
                raise TypeError(f"matmul site {name} is not inside a diffusers Attention")
            parent.add_module(attr, QuantMatMul(lq))
            parent.set_processor(_QUANT_PROCESSOR)
            continue
        mod = getattr(parent, attr)
        if isinstance(mod, QuantLayerMixin):
            raise TypeError(f"layer {name} is already quantized")
        setattr(parent, attr, _QUANT_CLS[lq.kind].from_float(mod, lq))


def unwrap_model(root: nn.Module) -> None:
    """Undo `wrap_model`: float layers with the very same weights, default attention processor."""
    for name, mod in list(root.named_modules()):
        if isinstance(mod, QuantLayerMixin):
            parent, attr = _parent(root, name)
            setattr(parent, attr, mod.to_float())
    for mod in root.modules():
        if isinstance(mod, Attention) and isinstance(mod.processor, QuantAttnProcessor):
            for site in MATMUL_SITES:
                if hasattr(mod, site):
                    delattr(mod, site)
            mod.set_processor(AttnProcessor2_0())


def quantizers(root: nn.Module) -> dict[str, UniformQuantizer]:
    """Every quantizer under root by its full module name."""
    return {n: m for n, m in root.named_modules() if isinstance(m, UniformQuantizer)}


def quantizer_roles(root: nn.Module) -> list[tuple[UniformQuantizer, str]]:
    """Every site quantizer under root with its role: "weight" (a layer's weight) or "act".

    The role comes from the site that owns the quantizer, never from its attribute name: a
    matmul's second operand lives in `weight_quantizer` but is an activation (K^T or V).
    """
    roles: list[tuple[UniformQuantizer, str]] = []
    for mod in root.modules():
        if isinstance(mod, QuantLayerMixin | QuantMatMul):
            roles += mod.layer_quantizers()
    return roles


def set_quant_mode(root: nn.Module, mode: str, which: str = "all") -> None:
    """Set the mode of the activation quantizers ("act"), weight quantizers ("weight") or both."""
    if which not in ("all", "act", "weight"):
        raise ValueError(f"which must be all|act|weight, got {which!r}")
    for q, role in quantizer_roles(root):
        if which in ("all", role):
            q.mode = mode
