"""Learnable equivalent transformation (LET; PassionSR's `saw_*_QuantLayer`, after OmniQuant).

Per input channel c of a Linear/Conv2d, a scale s_c and a shift d_c move between activation and
weight without changing the FP function (PassionSR, after OmniQuant):

    x' = (x − d)/s,   W' = W·diag(s),   y = W' x' + b + W d

The quantizers then see x' and W'. s starts at `(max|X_c| / max|W_c|)^α` (α = 0.3, both
exponents α as in PassionSR's code, unlike SmoothQuant's α / 1−α), d at 0. Inside
`learnable_let` the layer's weight, `input_scale`, `input_shift` and `shift_bias` are recomputed
from (W_fp, s, d) on every call, so gradients reach s and d; on exit the final values are stored
in the layer's ordinary parameter and buffers (InputTransform scale/shift: saved, loaded, counted).
The shift's correction `W d` is a saved vector where it is a constant (Linear, unpadded conv)
and the per-tap sums of `W_fp d` on a zero-padded conv, whose border-exact map transforms.py adds.

The attention LET (`learnable_matmul_scales`) is PassionSR's `scale_factor_qk`/`scale_factor_vw`:
one scale over each attention matmul's contraction dim, `a diag(s) @ diag(s)^-1 b` (q s, k / s per
head dim shared by all heads; P s, V / s per key token), init `(max|b| / max|a|)^α` from FP
calibration statistics (`matmul_absmax`) and learned beside the layer scales.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor, nn

from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.learnable import static_quantizers
from quantface.quant.smoothing import channel_absmax
from quantface.quant.transforms import shift_taps
from quantface.quant.wrap import quantizer_roles

S_MIN = 1e-5


def let_init_scale(act_absmax: Tensor, weight: Tensor, alpha: float = 0.3) -> Tensor:
    """s_c = (max|X_c| / max|W_c|)^α, ≥ 1e-5; channels dead in X or W get 1."""
    a = torch.nan_to_num(act_absmax.detach().double(), nan=0.0, posinf=0.0)
    w = channel_absmax(weight).double()
    live = (a > 0) & (w > 0)
    s = (a.clamp_min(1e-12) / w.clamp_min(1e-12)).pow(alpha)
    return torch.where(live, s, torch.ones_like(s)).clamp_min(S_MIN).float()


def _columns(w: Tensor, v: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (w.dim() - 2))


def _set_shift(mod: QuantLayerMixin, w0: Tensor, d: Tensor) -> None:
    """The shift d and its FP output correction from W_fp (a vector, or per-tap sums)."""
    mod._buffers["input_shift"] = d
    if "shift_taps" in mod._buffers:
        mod._buffers["shift_taps"] = shift_taps(w0, d)
    else:
        mod._buffers["shift_bias"] = (w0.flatten(2).sum(-1) if w0.dim() > 2 else w0) @ d


@contextlib.contextmanager
def learnable_let(layers: dict[str, QuantLayerMixin]) -> Iterator[list[nn.Parameter]]:
    """Train (s, d) of layers whose weight is still the FP weight and `input_scale` holds s_init.

    Memory: the FP weight is used in place (frozen, not copied), and W·diag(s) exists only while
    its layer runs (dropped after each call; a checkpointed block rebuilds it in the backward),
    so at full size the stage holds no second copy of the weights (SD-2.1: 3.5 GB each).
    """
    state = {}
    params: list[nn.Parameter] = []
    for n, m in layers.items():
        w_param = m._parameters.pop("weight")
        s = nn.Parameter(m.input_scale.detach().clone())
        d = nn.Parameter(m.input_shift.detach().clone()) if "input_shift" in m._buffers else None
        params += [s] + ([d] if d is not None else [])
        state[n] = (w_param, s, d)

        def hook(mod, args, st=state[n]):
            w_param, s, d = st
            w0 = w_param.detach()
            s = s.clamp_min(S_MIN)
            object.__setattr__(mod, "weight", w0 * _columns(w0, s))
            mod._buffers["input_scale"] = s
            if d is not None:
                _set_shift(mod, w0, d)

        def drop(mod, args, output):
            mod.__dict__.pop("weight", None)

        state[n] = (*state[n], (m.register_forward_pre_hook(hook), m.register_forward_hook(drop)))
    try:
        yield params
    finally:
        for n, m in layers.items():
            w_param, s, d, handles = state[n]
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                s = s.detach().clamp_min(S_MIN)
                m.__dict__.pop("weight", None)
                if d is not None:  # from the FP weight, before it becomes W·diag(s)
                    _set_shift(m, w_param.detach(), d.detach().clone())
                w_param.copy_(w_param * _columns(w_param, s))
                m._parameters["weight"] = w_param
                m._buffers["input_scale"] = s.clone()


@contextlib.contextmanager
def dynamic_ranges(root: nn.Module) -> Iterator[None]:
    """Every static quantizer takes its range from the current tensor (min-max) meanwhile.

    PassionSR's LET stage re-initialises all quantizer bounds to the current min/max at every
    iteration (`set_all_init(False)`): a dynamic quantizer of the same granularity does that.
    """
    chosen = static_quantizers(root, "all")
    specs = [q.spec for q in chosen]
    for q in chosen:
        q.spec = replace(q.spec, dynamic=True)
    try:
        yield
    finally:
        for q, spec in zip(chosen, specs, strict=True):
            q.spec = spec


@torch.no_grad()
def matmul_absmax(
    root: nn.Module, images: Tensor, batch_size: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per contraction position, max|a| and max|b| of every matmul on FP inputs (quantizers off).

    The calibration statistics keep operand channels along the last dim, which for K^T and V is
    not the contraction dim, so the attention LET init needs this one extra FP pass.
    """
    stats: dict[str, tuple[Tensor, Tensor]] = {}
    mms = {n: m for n, m in root.named_modules() if isinstance(m, QuantMatMul)}

    def hook(name: str):
        def record(mod: nn.Module, args: tuple[Tensor, Tensor]) -> None:
            a, b = (t.detach().abs() for t in args)
            new = (a.flatten(0, -2).amax(0), b.transpose(-1, -2).flatten(0, -2).amax(0))
            old = stats.get(name, new)
            stats[name] = (torch.maximum(old[0], new[0]), torch.maximum(old[1], new[1]))

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mms.items()]
    chosen = [q for q, _ in quantizer_roles(root)]
    modes = [q.mode for q in chosen]
    for q in chosen:
        q.mode = "off"
    try:
        for batch in images.split(batch_size):
            root.restore(batch)
    finally:
        for h in handles:
            h.remove()
        for q, mode in zip(chosen, modes, strict=True):
            q.mode = mode
    return stats


def matmul_init_scale(a_max: Tensor, b_max: Tensor, alpha: float = 0.3) -> Tensor:
    """s = (max|b| / max|a|)^α per contraction position, both maxima ≥ 1e-5 (PassionSR's clamp)."""
    return (b_max.clamp_min(1e-5) / a_max.clamp_min(1e-5)).pow(alpha).clamp_min(S_MIN)


def _use_scale(mod: nn.Module, args: tuple, s: nn.Parameter) -> None:
    mod._buffers["inner_scale"] = s.clamp_min(S_MIN)


@contextlib.contextmanager
def learnable_matmul_scales(mms: dict[str, QuantMatMul]) -> Iterator[list[nn.Parameter]]:
    """Train the `inner_scale` of matmuls (attention LET); the final values stay in the buffer."""
    params = {n: nn.Parameter(m.inner_scale.detach().clone()) for n, m in mms.items()}
    handles = [
        m.register_forward_pre_hook(partial(_use_scale, s=params[n])) for n, m in mms.items()
    ]
    try:
        yield list(params.values())
    finally:
        for h in handles:
            h.remove()
        for n, m in mms.items():
            m._buffers["inner_scale"] = params[n].detach().clamp_min(S_MIN).clone()
