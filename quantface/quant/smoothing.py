"""Per-input-channel smoothing (SmoothQuant's migration) and where its 1/s can be folded.

`Y = X W^T = (X diag(s)^-1)(W diag(s))^T` exactly, so dividing activation channel j by
`s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` and multiplying weight column j by s_j moves the
outlier magnitude from activations into weights. For a conv, j is the input channel (per pixel);
`W[:, j]` spans (C_out, kh, kw); zero padding commutes with the per-channel scale.

The division can be free when the op producing X is per-channel linear in its output
(`smoothing_groups` finds those from the diffusers module structure):

  norm (LayerNorm/GroupNorm affine)  -> gamma, beta /= s       (norm1 -> attn1.to_q/k/v, norm2 ->
                                                               attn2.to_q, norm3 -> ff.net.0.proj,
                                                               Transformer2D norm -> proj_in, VAE
                                                               attention group_norm -> to_q/k/v)
  rows   (a Linear whose output is X) -> rows, bias /= s       (to_v -> to_out.0: AV is linear in V)
  geglu  (value half of GEGLU's proj) -> those rows /= s       (ff.net.0.proj -> ff.net.2)

Every other layer (a conv after SiLU, attn2.to_k/to_v fed by the context, time embeddings,
shortcuts, samplers, proj_out) can only be smoothed at run time, which costs one multiply per
input element and is counted in cost.json. All readers of one activation share one s.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import Tensor, nn

S_MIN, S_MAX = 1e-5, 1e5


@dataclass(frozen=True)
class SmoothGroup:
    """Layers reading the same activation; `producer` absorbs 1/s (None: applied at run time)."""

    layers: tuple[str, ...]
    producer: str | None = None
    fold: str = "online"  # "norm" | "rows" | "geglu" | "online"


def channel_absmax(t: Tensor, dim: int = 1) -> Tensor:
    """max |t| over every dim but `dim` (a weight's input channels: dim 1 for Linear and Conv2d)."""
    t = t.detach().abs().movedim(dim, 0)
    return t.reshape(t.shape[0], -1).amax(dim=1)


def smoothing_scales(
    act_absmax: Tensor, weight_absmax: Tensor, alpha: float, beta: float | None = None
) -> Tensor:
    """s_j = a_j^alpha / w_j^beta (beta = 1 - alpha: SmoothQuant's migration); channels dead in X
    or W get s = 1 (no NaN/Inf, no blow-up).

    An independent beta is there for SVDQuant's search, which also tries beta = 0 (activation
    statistics only) and alpha = beta = 0 (no smoothing). A channel never active in calibration
    (a_j = 0) or with an all-zero weight column gives no information about its balance, so it is
    left alone; the rest is clamped to [1e-5, 1e5] as SmoothQuant clamps both statistics.
    """
    beta = 1.0 - alpha if beta is None else beta
    if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
        raise ValueError(f"smoothing alpha and beta must be in [0, 1], got {alpha}, {beta}")
    a = torch.nan_to_num(act_absmax.detach().double(), nan=0.0, posinf=0.0)
    w = torch.nan_to_num(weight_absmax.detach().double(), nan=0.0, posinf=0.0)
    live = (a > 0) & (w > 0)
    s = a.clamp(min=S_MIN).pow(alpha) / w.clamp(min=S_MIN).pow(beta)
    s = torch.where(live, s, torch.ones_like(s)).clamp(S_MIN, S_MAX)
    return s.float()


def plain_attention(attn: Attention) -> bool:
    """Q/K/V projections and AV->to_out with nothing in between (no extra K/V, norms on q/k)."""
    return (
        getattr(attn, "add_k_proj", None) is None
        and getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and attn.spatial_norm is None
    )


def _affine_norm(m: nn.Module | None) -> bool:
    if isinstance(m, nn.LayerNorm):
        return m.weight is not None
    return isinstance(m, nn.GroupNorm) and m.affine


def smoothing_groups(model: nn.Module, layers: Collection[str]) -> list[SmoothGroup]:
    """Group the given Linear/Conv2d layers by shared input and find a foldable producer.

    Conservative: a fold is used only when every reader of the activation is in `layers` and the
    producer's output feeds nothing else; everything else becomes a run-time (online) group.
    """
    layers = set(layers)
    groups: list[SmoothGroup] = []

    def add(readers: list[str], producer: str, fold: str) -> None:
        if readers and all(r in layers for r in readers):
            groups.append(SmoothGroup(tuple(readers), producer, fold))

    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(mod, BasicTransformerBlock):
            if mod.norm_type != "layer_norm" or mod.pos_embed is not None:
                continue
            a1 = mod.attn1
            if (
                not mod.only_cross_attention
                and not a1.is_cross_attention
                and plain_attention(a1)
                and _affine_norm(mod.norm1)
            ):
                add([f"{pre}attn1.to_{x}" for x in "qkv"], f"{pre}norm1", "norm")
            if mod.attn2 is not None and _affine_norm(mod.norm2):
                add([f"{pre}attn2.to_q"], f"{pre}norm2", "norm")
            if _affine_norm(mod.norm3) and mod._chunk_size is None:
                add([f"{pre}ff.net.0.proj"], f"{pre}norm3", "norm")
            ff = mod.ff.net
            if isinstance(ff[0], GEGLU) and isinstance(ff[-1], nn.Linear):
                add([f"{pre}ff.net.{len(ff) - 1}"], f"{pre}ff.net.0.proj", "geglu")
        elif isinstance(mod, Attention):
            if not plain_attention(mod):
                continue
            add([f"{pre}to_out.0"], f"{pre}to_v", "rows")
            if mod.group_norm is not None and not mod.is_cross_attention:
                add([f"{pre}to_{x}" for x in "qkv"], f"{pre}group_norm", "norm")
        elif (
            isinstance(mod, Transformer2DModel)
            and getattr(mod, "is_input_continuous", False)
            and _affine_norm(mod.norm)
        ):
            add([f"{pre}proj_in"], f"{pre}norm", "norm")
    grouped = {r for g in groups for r in g.layers}
    groups += [SmoothGroup((n,)) for n in sorted(layers - grouped)]
    return groups


@torch.no_grad()
def fold_inverse_scale(model: nn.Module, group: SmoothGroup, s: Tensor) -> None:
    """Divide the producer's output channels by s (so its consumers see X / s)."""
    prod = model.get_submodule(group.producer)
    if group.fold == "norm":
        if isinstance(prod, nn.GroupNorm) and prod.num_channels != s.numel():
            raise ValueError(f"{group.producer}: {prod.num_channels} channels, {s.numel()} scales")
        prod.weight.div_(s)
        if prod.bias is not None:
            prod.bias.div_(s)
        return
    if group.fold == "rows":
        rows = slice(0, prod.out_features)
    elif group.fold == "geglu":
        rows = slice(0, s.numel())  # GEGLU: value = first half of proj's output, gate = second
    else:
        raise ValueError(f"group {group.layers} has no foldable producer")
    if rows.stop - rows.start != s.numel():
        raise ValueError(f"{group.producer}: {rows.stop} output rows, {s.numel()} scales")
    prod.weight[rows].div_(s[:, None])
    if prod.bias is not None:
        prod.bias[rows].div_(s)


@torch.no_grad()
def scale_weight_columns(layer: nn.Module, s: Tensor) -> None:
    """W[:, j] *= s_j (Linear [O, I], Conv2d [O, I, kh, kw])."""
    shape = [1, -1] + [1] * (layer.weight.dim() - 2)
    layer.weight.mul_(s.view(shape))


def calib_absmax(stats: dict[str, Tensor]) -> Tensor:
    """Per-input-channel max |X_j| from cached calibration statistics (ch_min / ch_max)."""
    return torch.maximum(stats["ch_min"].abs(), stats["ch_max"].abs())


def fold_order(groups: list[SmoothGroup]) -> list[SmoothGroup]:
    """Output-side folds (`rows`, `geglu`) first: they rescale their producer's rows, and the
    producer (to_v, ff.net.0.proj) must be smoothed afterwards from its updated weight."""
    return sorted(groups, key=lambda g: g.fold not in ("rows", "geglu"))


def group_absmax(
    model: nn.Module, group: SmoothGroup, act_absmax: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """(max |X_j|, max |W_j|) over all readers of the group: one s serves every reader."""
    readers = [model.get_submodule(n) for n in group.layers]
    a = torch.stack([act_absmax[n] for n in group.layers]).amax(0)
    w = torch.stack([channel_absmax(r.weight) for r in readers]).amax(0)
    return a, w


@torch.no_grad()
def smooth_group(model: nn.Module, group: SmoothGroup, s: Tensor) -> Tensor:
    """Scale the readers' weight columns by s and fold 1/s into the producer, or (online) set
    the readers' `input_scale` buffer (InputTransform(scale=True)). Returns s on their device."""
    readers = [model.get_submodule(n) for n in group.layers]
    s = s.to(readers[0].weight.device)
    for r in readers:
        scale_weight_columns(r, s)
    if group.fold != "online":
        fold_inverse_scale(model, group, s)
        return s
    for n, r in zip(group.layers, readers):
        if "input_scale" not in r._buffers:
            raise ValueError(f"{n} needs an input_scale buffer for run-time smoothing")
        r.input_scale.copy_(s)
    return s


@torch.no_grad()
def apply_smoothing(
    model: nn.Module,
    groups: list[SmoothGroup],
    act_absmax: dict[str, Tensor],
    alpha: float | dict[str, float],
) -> dict[str, Tensor]:
    """Smooth every group (in `fold_order`) with s = a^alpha / w^(1-alpha).

    Online groups need their reader wrapped with an `input_scale` buffer. `alpha` may be a
    number or a per-first-reader mapping. Returns layer -> s.
    """
    scales: dict[str, Tensor] = {}
    for g in fold_order(groups):
        al = alpha if isinstance(alpha, float | int) else alpha[g.layers[0]]
        s = smoothing_scales(*group_absmax(model, g, act_absmax), float(al))
        scales.update(dict.fromkeys(g.layers, smooth_group(model, g, s)))
    return scales
