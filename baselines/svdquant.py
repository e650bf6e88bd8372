"""SVDQuant (Li et al., ICLR 2025): smoothing plus a 16-bit low-rank branch absorbing outliers.

What the paper/code does: smooth `X^ = X diag(s)^-1`, `W^ = W diag(s)`, then split
`W^ = L1 L2 + R` with L1 L2 the rank-r SVD (r = 32) kept in 16 bit and only the residual R
quantized: `Y = X^ L1 L2 + Q(X^) Q(R)`. deepcompressor (`examples/diffusion/configs/svdquant/
__default__.yaml`, `int4.yaml`): INT4 symmetric weights in groups of 64 input channels, INT4
*dynamic* activations in groups of 64 channels per token, smoothing applied online
(`fuse_when_possible: false`), and two searches, both scored by the layer's output error
(`objective: OutputsError`, `degree: 2`, i.e. the summed squared output error):

- smoothing (`calib/smooth.py`, `strategy: GridSearch`, `alpha: 0.5`, `beta: -2`,
  `num_grids: 20`, `allow_low_rank: true`): `s_j = max|X_j|^a / max|W_j|^b` over the candidates
  (a, b) = (0, 0) (no smoothing), (a, 0) and (a, 1 - a) for a in {1/20, ..., 19/20} (39 in all;
  `SmoothCalibConfig.get_alpha_beta_pairs`), each candidate scored with the low-rank branch in
  the loop: the SVD of the smoothed weight, the quantized residual, quantized activations;
- the branch (`calib/lowrank.py`, `num_iters: 100`, `early_stop: true`): iteration i refits
  L = SVD_r(W^ - Q(R_{i-1})), R_i = W^ - L; the best iterate by output error is kept and the
  loop stops at the first iterate worse than the best so far.

Layers (the config's `skips` for both `smooth.proj` and `wgts.low_rank`): embed, resblock,
transformer_proj_in/out, transformer norms, down_sample, up_sample are quantized but get neither
smoothing nor a branch. On this suite's diffusers UNet and VAE that is (`branch_layers`):

  embed        -> UNet conv_in, conv_out, time_embedding; VAE encoder/decoder conv_in,
                  conv_out, quant_conv, post_quant_conv (the latent's in/out projections);
                  the convs by role, as the model adapter names them (`layer_roles`)
  resblock     -> every layer in a ResnetBlock2D (conv1, conv2, conv_shortcut, time_emb_proj)
  proj_in/out  -> Transformer2DModel.proj_in / proj_out
  down/up_sample -> Downsample2D / Upsample2D convs
  the rest     -> smoothing + branch: attention to_q/to_k/to_v/to_out.0 (UNet attn1/attn2 and
                  the VAE mid-block attention) and the feed-forward ff.net.0.proj / ff.net.2

Adaptation and choices here:
- the objective is each layer's own output error on the calibration rows the suite caches
  (`CalibrationSet.input_stats(site)["rows"]`, FP activations); deepcompressor scores Q/K/V (a
  shared s and, by default, one shared branch for the concatenated [q; k; v]) by the attention
  block's output, which needs the block replayed. Readers of one activation share one s here
  too (`smoothing_groups`), scored by the sum of their output errors; each keeps its own branch;
- all candidates of a group are scored together in batched matmuls; every SVD (each candidate's,
  each refit iterate's, the final branch's) is the float64 top-r of deepcompressor's
  `LowRankBranch`, formed from the Gram matrix of the smaller side instead of a full SVD
  (quant/lowrank.py: same factors to float64 rounding), and a tall layer's candidates share one
  W^T W. The chosen candidate's factors are kept and are the branch refit's first iterate (the
  same SVD_r(W^)), so that SVD is not taken twice (unless a later fold rescaled the weight, which
  the weight's row/column norms reveal); ties go to the first candidate;
- the search and branch need a layer's whole input in one row, so only Linear and unpadded 1x1
  convs qualify; after the skips above no other layer is left in these models;
- smoothing is folded where the fold is exact (SmoothQuant's rules, quant/smoothing.py) and
  applied online otherwise (counted in cost.json; `online: false` drops the online groups); the
  official code applies all of it online. Folding into to_v also rescales the AV matmul's V,
  whose quantization error is not in the search's objective;
- defaults keep the micro tests fast: `num_grids` 10 (the official `fast.yaml` grid, 19
  candidates) and `lowrank_iters` 10 with the early stop; config/paper.yaml sets the official 20
  and 100;
- rank: `rank` (32), capped at floor(max_rank_fraction * min(O, I)) (fraction 0.1) so a tiny
  layer is not mostly branch. The micro and tiny models have 8..64-channel layers, where the
  cap decides the rank; 0.1 keeps the branch as large relative to the layer as rank 32 is on
  SD's 320-channel layers (32 / 320), so the tiny study does not hand SVDQuant (or QuantFace,
  whose two branches share the same total budget) a far larger FP16 branch than the paper's;
- the branch is rounded to FP16 and R formed from the rounded factors (exact in FP);
- groups of 64 along input channels for weights and activations where the channel count allows;
  otherwise the largest divisor of C <= 64 (so a 48-channel input uses one group of 48, i.e.
  per token / per output channel). Activations asymmetric dynamic (stand-in for the code's
  unsigned INT4 for non-negative inputs plus `shift_activations`);
- attention matmuls: deepcompressor's diffusion configs do not quantize them (nunchaku runs
  attention in 16 bit); the suite quantizes them at the activation bits for every method,
  per-token dynamic as deepcompressor quantizes every activation (one token's channels share a
  scale): Q, V and the softmax output per row, K^T [B*h, d, M] per key token (a column).

Quantizers: `native_scheme` (per-group, `group_size`); a given scheme replaces them. The search
and the refit then score candidates with the scheme's quantizers on the calibration rows (a
static per-tensor activation range as the rows' own min-max, a stand-in for the final range),
and static ranges are observed on the smoothed model at the end.

Options (config `method_options.svdquant`): `SVDQuantOptions` below.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

from quantface.methods.base import smoothable
from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.layers import QuantLayerMixin
from quantface.quant.lowrank import capped_rank, refit_lowrank, scaled_svd_factors
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, UniformQuantizer
from quantface.quant.scheme import QuantScheme
from quantface.quant.smoothing import (
    SmoothGroup,
    calib_absmax,
    fold_order,
    group_absmax,
    smooth_group,
    smoothing_groups,
    smoothing_scales,
)
from quantface.quant.specs import InputTransform
from quantface.registry import METHODS
from quantface.timing import log_timing


@dataclass(frozen=True)
class SVDQuantOptions(Options):
    """SVDQuant's options (config `method_options.svdquant`; config/README.md).

    rank: of the 16-bit low-rank branch, capped per layer by max_rank_fraction of
    min(C_out, C_in*k*k); num_grids: of the per-layer smoothing search; group_size: of the
    weight/activation quantization groups; lowrank_iters, early_stop: the branch refit;
    online: run-time smoothing where 1/s cannot be folded.
    """

    rank: int = 32
    num_grids: int = 10
    group_size: int = 64
    lowrank_iters: int = 10
    early_stop: bool = True
    online: bool = True
    max_rank_fraction: float = 0.1


SKIPPED_BLOCKS = (ResnetBlock2D, Downsample2D, Upsample2D, TimestepEmbedding)
# deepcompressor's `embed` skip: the first and last convs and the latent convs, by role (the
# model adapter names them: RestorerBundle.layer_roles)
EMBED_ROLES = (
    "unet_in",
    "unet_out",
    "vae_encoder_in",
    "vae_encoder_out",
    "vae_decoder_in",
    "vae_decoder_out",
    "vae_latent_out",
    "vae_latent_in",
)
SEARCH_CHUNK = 1 << 25  # floats per batched candidate chunk (~128 MB of FP32 per operand set)


def smoothing_candidates(num_grids: int) -> list[tuple[float, float]]:
    """deepcompressor's (alpha, beta) grid for `alpha > 0, beta = -2`: no smoothing, then
    (a, 0) and (a, 1 - a) for a = i / num_grids, i = 1 .. num_grids - 1."""
    grid = [i / num_grids for i in range(1, num_grids)]
    return [(0.0, 0.0)] + [(a, 0.0) for a in grid] + [(a, 1.0 - a) for a in grid]


def _single_row_input(mod: nn.Module) -> bool:
    """A Linear, or a conv whose output pixel depends on one input pixel (1x1, unpadded)."""
    if isinstance(mod, nn.Conv2d):
        return mod.kernel_size == (1, 1) and tuple(mod.padding) == (0, 0)
    return isinstance(mod, nn.Linear)


def branch_layers(model: RestorerBundle, layers: Collection[str]) -> list[str]:
    """The layers deepcompressor smooths and gives a branch: `layers` minus its skip list
    (embed, resblock, transformer_proj_in/out, down/up_sample), mapped in the module docstring."""
    skipped: set[str] = set(model.layers_in_roles(EMBED_ROLES))
    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(mod, SKIPPED_BLOCKS):
            skipped |= {pre + n for n, _ in mod.named_modules() if n}
        elif isinstance(mod, Transformer2DModel):
            skipped |= {f"{pre}proj_in", f"{pre}proj_out"}
    return [n for n in layers if n not in skipped and _single_row_input(model.get_submodule(n))]


def _row_quantizer(spec: QuantSpec, act: bool) -> UniformQuantizer:
    """The layer's quantizer on 2-D rows [..., fan_in]: a dynamic range equals the weights'
    min-max calibration; activations move their channel dim last."""
    return UniformQuantizer(
        replace(spec, dynamic=True, channel_dim=-1 if act else spec.channel_dim)
    )


def branch_output_errors(
    x: Tensor,
    w: Tensor,
    s: Tensor,
    rank: int,
    qa: UniformQuantizer,
    qw: UniformQuantizer,
    gram: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Per candidate s_k (rows of s [K, I]): ||X W^T - (Q(X^) Q(R)^T + X^ L^T)||^2 with
    X^ = X / s_k, W^ = W s_k, L = SVD_r(W^) (FP16 factors, float64 top-r as deepcompressor:
    quant/lowrank.py), R = W^ - L. x [N, I], w [O, I]; `gram`: W^T W in float64, shared by the
    candidates of a tall W. Returns (errors [K], the candidates' factors (L1, L2) or None)."""
    n, i = x.shape
    o = w.shape[0]
    y = x @ w.T
    xs = x[None] / s[:, None, :]
    ws = w[None] * s[:, None, :]
    factors = None
    if rank > 0:
        factors = scaled_svd_factors(w, s, rank, gram)
        lw = factors[0] @ factors[1]
    else:
        lw = torch.zeros_like(ws)
    qr = qw((ws - lw).reshape(-1, i)).reshape(-1, o, i)
    qx = qa(xs.reshape(-1, i)).reshape(-1, n, i)
    y_hat = qx @ qr.transpose(1, 2) + xs @ lw.transpose(1, 2)
    return (y_hat - y).pow(2).sum((1, 2)), factors


@dataclass
class KnownBranch:
    """The smoothing search's factors of the chosen candidate for one layer, with the smoothed
    weight's row and column norms they were computed from (the branch fit reuses the factors as
    its first iterate only if the layer's weight still has those norms)."""

    l1: Tensor
    l2: Tensor
    norms: Tensor

    @staticmethod
    def fingerprint(w2: Tensor) -> Tensor:
        w = w2.detach().double()
        return torch.cat([w.norm(dim=1), w.norm(dim=0)])

    def matches(self, w2: Tensor) -> bool:
        return torch.allclose(self.fingerprint(w2), self.norms, rtol=1e-5, atol=0.0)


def search_group_scale(
    model: nn.Module,
    group: SmoothGroup,
    calib: CalibrationSet,
    absmax: dict[str, Tensor],
    pairs: list[tuple[float, float]],
    known: dict[str, KnownBranch] | None = None,
) -> tuple[Tensor, tuple[float, float], Tensor]:
    """The candidate s with the least summed output error of the group's readers, branch in the
    loop. Returns (s, its (alpha, beta), every candidate's error). With `known`, each reader's
    factors of the chosen candidate are stored there (layer -> KnownBranch) for the branch fit."""
    a, w_abs = group_absmax(model, group, absmax)
    scales = torch.stack([smoothing_scales(a, w_abs, al, be) for al, be in pairs])
    errors = torch.zeros(len(pairs), dtype=torch.float64, device=scales.device)
    factors: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for name in group.layers:
        mod = model.get_submodule(name)
        assert isinstance(mod, QuantLayerMixin)
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
        x = calib.input_stats(name)["rows"].to(w.device).float()
        s = scales.to(w.device)
        qa = _row_quantizer(mod.act_quantizer.spec, act=True)
        qw = _row_quantizer(mod.weight_quantizer.spec, act=False)
        rank = mod.transform_spec().lowrank
        # one W^T W for every candidate of a tall layer (their Gram matrices are its rescalings)
        gram = w.double().T @ w.double() if 0 < rank and w.shape[0] >= w.shape[1] else None
        chunk = max(1, SEARCH_CHUNK // (w.numel() + x.numel() + x.shape[0] * w.shape[0]))
        for k in range(0, len(pairs), chunk):
            err, fk = branch_output_errors(x, w, s[k : k + chunk], rank, qa, qw, gram)
            errors[k : k + chunk] += err.double().to(errors.device)
            if fk is not None and known is not None:
                factors.setdefault(name, []).extend(zip(fk[0], fk[1], strict=True))
    best = int(errors.argmin())
    if known is not None:
        for name, fs in factors.items():
            mod = model.get_submodule(name)
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
            ws = w * scales[best].to(w.device)
            l1, l2 = fs[best]
            known[name] = KnownBranch(l1.clone(), l2.clone(), KnownBranch.fingerprint(ws))
    return scales[best], pairs[best], errors


def fit_branch(
    mod: QuantLayerMixin,
    rows: Tensor,
    s: Tensor,
    iters: int,
    early_stop: bool,
    known: KnownBranch | None = None,
) -> list[float]:
    """Refit the layer's branch by output error on its smoothed rows X / s; returns the errors.
    `known`: the search's factors of this smoothed weight, reused as the first iterate when the
    weight is still the one they were computed from (not rescaled by a later fold)."""
    w = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
    first = (known.l1, known.l2) if known is not None and known.matches(w) else None
    x = rows.to(w.device).float() / s.to(w.device)
    y = x @ w.T
    qx = _row_quantizer(mod.act_quantizer.spec, act=True)(x)
    qw = _row_quantizer(mod.weight_quantizer.spec, act=False)

    def output_error(l1: Tensor, l2: Tensor, qr: Tensor) -> float:
        return float((qx @ qr.T + (x @ l2.T) @ l1.T - y).pow(2).sum())

    rank = mod.transform_spec().lowrank
    l1, l2, r, errors = refit_lowrank(w, rank, qw, output_error, iters, early_stop, first)
    mod.lowrank.set_factors(l1, l2)
    with torch.no_grad():
        mod.weight.copy_(r.reshape(mod.weight.shape))
    return errors


@METHODS.register("svdquant")
class SVDQuant:
    """SVDQuant: searched smoothing, a 16-bit rank-32 SVD branch, and the quantized residual."""

    label = "SVDQuant"  # how tables and figures name it

    name = "svdquant"
    options = SVDQuantOptions  # its method_options

    def native_scheme(self, opts: SVDQuantOptions) -> QuantScheme:
        """Per-group INT4: weights symmetric, activations asymmetric dynamic, `group_size`."""
        return QuantScheme(
            weight_symmetric=True,
            weight_granularity="group",
            act_granularity="group",
            group_size=opts.group_size,
        )

    def smoothing_plan(
        self, model: RestorerBundle, plan: BitPlan, opts: SVDQuantOptions
    ) -> tuple[list[str], list[SmoothGroup]]:
        """The branch layers and their smoothing groups (online ones dropped unless `online`)."""
        branch = branch_layers(model, smoothable(model, plan))
        groups = smoothing_groups(model, branch)
        if not opts.online:
            groups = [g for g in groups if g.fold != "online"]
        return branch, groups

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: SVDQuantOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Per branch layer a rank-r branch (online smoothing where nothing can fold s); the
        searched smoothing then the branch refit on the wrapped model; static ranges (a given
        scheme) observed on the smoothed model."""
        branch, groups = self.smoothing_plan(model, plan, opts)
        online = {n for g in groups if g.fold == "online" for n in g.layers}
        ranks = {}
        for name in branch:
            w = model.get_submodule(name).weight
            ranks[name] = capped_rank(opts.rank, w.shape[0], w[0].numel(), opts.max_rank_fraction)
        transforms = {n: InputTransform(n in online, False, ranks.get(n, 0)) for n in branch}

        def smooth_and_fit(model: RestorerBundle) -> None:
            known: dict[str, KnownBranch] = {}
            chosen = self.smooth(model, groups, calib, opts.num_grids, known)
            for name in branch:
                mod = model.get_submodule(name)
                assert isinstance(mod, QuantLayerMixin)
                if mod.transform_spec().lowrank == 0:
                    continue
                s = chosen[name][0] if name in chosen else torch.ones(mod.weight.shape[1])
                rows = calib.input_stats(name)["rows"]
                t0 = time.perf_counter()
                errors = fit_branch(
                    mod, rows, s, opts.lowrank_iters, opts.early_stop, known.pop(name, None)
                )
                log_timing("lowrank_iter", len(errors), time.perf_counter() - t0)

        return Recipe(plan, transforms, transform=smooth_and_fit)

    def smooth(
        self,
        model: RestorerBundle,
        groups: list[SmoothGroup],
        calib: CalibrationSet,
        num_grids: int,
        known: dict[str, KnownBranch] | None = None,
    ) -> dict[str, tuple[Tensor, tuple[float, float]]]:
        """Search and apply each group's s in `fold_order`; layer -> (s, chosen (alpha, beta)).
        `known` collects the chosen candidates' branch factors (`search_group_scale`)."""
        absmax = {n: calib_absmax(calib.input_stats(n)) for g in groups for n in g.layers}
        pairs = smoothing_candidates(num_grids)
        chosen = {}
        for g in fold_order(groups):
            t0 = time.perf_counter()
            s, pair, _ = search_group_scale(model, g, calib, absmax, pairs, known)
            log_timing("smooth_candidate", len(pairs) * len(g.layers), time.perf_counter() - t0)
            chosen.update(dict.fromkeys(g.layers, (smooth_group(model, g, s), pair)))
        return chosen
