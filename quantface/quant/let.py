"""Learnable equivalent transformation (LET; PassionSR's `saw_*_QuantLayer`, after OmniQuant).

Per input channel c of a Linear/Conv2d, a scale s_c and a shift d_c move between activation and
weight without changing the FP function (methods.md §6):

    x' = (x − d)/s,   W' = W·diag(s),   y = W' x' + b + W d

The quantizers then see x' and W'. s starts at `(max|X_c| / max|W_c|)^α` (α = 0.3, both
exponents α as in PassionSR's code, unlike SmoothQuant's α / 1−α), d at 0. Inside
`learnable_let` the layer's weight, `input_scale`, `input_shift` and `shift_bias` are recomputed
from (W_fp, s, d) on every call, so gradients reach s and d; on exit the final values are stored
in the layer's ordinary parameter and buffers (InputTransform scale/shift: saved, loaded, counted).
The shift is only used where `W d` is a constant (Linear, unpadded conv; layers.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import Tensor, nn

from quantface.quant.layers import QuantLayerMixin
from quantface.quant.learnable import static_quantizers
from quantface.quant.smoothing import channel_absmax

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


def _shift_bias(w0: Tensor, d: Tensor) -> Tensor:
    return (w0.flatten(2).sum(-1) if w0.dim() > 2 else w0) @ d


@contextlib.contextmanager
def learnable_let(layers: dict[str, QuantLayerMixin]) -> Iterator[list[nn.Parameter]]:
    """Train (s, d) of layers whose weight is still the FP weight and `input_scale` holds s_init."""
    state = {}
    params: list[nn.Parameter] = []
    for n, m in layers.items():
        w_param = m._parameters.pop("weight")
        s = nn.Parameter(m.input_scale.detach().clone())
        d = nn.Parameter(m.input_shift.detach().clone()) if "input_shift" in m._buffers else None
        params += [s] + ([d] if d is not None else [])
        state[n] = (w_param, w_param.detach().clone(), s, d)

        def hook(mod, args, st=state[n]):
            _, w0, s, d = st
            s = s.clamp_min(S_MIN)
            object.__setattr__(mod, "weight", w0 * _columns(w0, s))
            mod._buffers["input_scale"] = s
            if d is not None:
                mod._buffers["input_shift"] = d
                mod._buffers["shift_bias"] = _shift_bias(w0, d)

        state[n] = (*state[n], m.register_forward_pre_hook(hook))
    try:
        yield params
    finally:
        for n, m in layers.items():
            w_param, w0, s, d, handle = state[n]
            handle.remove()
            with torch.no_grad():
                s = s.detach().clamp_min(S_MIN)
                m.__dict__.pop("weight", None)
                w_param.copy_(w0 * _columns(w0, s))
                m._parameters["weight"] = w_param
                m._buffers["input_scale"] = s.clone()
                if d is not None:
                    m._buffers["input_shift"] = d.detach().clone()
                    m._buffers["shift_bias"] = _shift_bias(w0, d.detach())


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
