"""Learnable boundary quantizer (LBQ; PassionSR, 2DQuant): learn the clipping bounds directly.

PassionSR's `Basic2DquantLayer` (in its released code) parametrises a quantizer by its lower and
upper bounds B_l, B_u: `Δ = (B_u − B_l)/(2^b − 1)`, `z = round(−B_l/Δ)`, and trains both with
straight-through rounding, so the gradient reaches the bounds through Δ and z. Here the frozen
`UniformQuantizer` keeps its (Δ, z) buffers; inside `learnable_bounds` each chosen static
quantizer instead carries Parameters `bound_lo`, `bound_hi` (from its current clipping range)
and derives (Δ, z) from them on every call. On exit (Δ, z) are written back as buffers, equal to
what the last forward used, so the saved format is unchanged.

The bounds are kept on either side of zero (B_l ≤ 0 ≤ B_u), the suite-wide convention that zero
is exactly representable (quantizer.py); PassionSR leaves them free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quantface.quant.learnable import static_quantizers
from quantface.quant.quantizer import UniformQuantizer, round_ste

_EPS = 1e-8


def _params_from_bounds(q: UniformQuantizer) -> tuple[Tensor, Tensor]:
    lo, hi, spec = q.bound_lo, q.bound_hi, q.spec
    if spec.symmetric:
        scale = torch.maximum(-lo, hi).clamp_min(_EPS) / spec.qmax
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp_min(_EPS)
    zero = torch.clamp(round_ste(-lo / scale) + spec.qmin, spec.qmin, spec.qmax)
    return scale, zero


def _pre_hook(q: UniformQuantizer, args: tuple) -> None:
    q.scale, q.zero_point = _params_from_bounds(q)  # buffers hold the differentiable values


@contextlib.contextmanager
def learnable_bounds(root: nn.Module, which: str = "all") -> Iterator[list[nn.Parameter]]:
    """Static quantizers under `root` learn (B_l, B_u) inside the block; returns the Parameters."""
    chosen = static_quantizers(root, which)
    params: list[nn.Parameter] = []
    handles = []
    for q in chosen:
        lo, hi = q.clip_range()
        q.register_parameter("bound_lo", nn.Parameter(lo.detach().clone().clamp_max(0)))
        q.register_parameter("bound_hi", nn.Parameter(hi.detach().clone().clamp_min(0)))
        params += [q.bound_lo, q.bound_hi]
        handles.append(q.register_forward_pre_hook(_pre_hook))
    try:
        yield params
    finally:
        for h in handles:
            h.remove()
        for q in chosen:
            with torch.no_grad():
                scale, zero = _params_from_bounds(q)
            q.scale, q.zero_point = scale.detach().clone(), zero.detach().clone()
            del q._parameters["bound_lo"], q._parameters["bound_hi"]


def keep_bounds_valid_(params: list[nn.Parameter]) -> None:
    """After a step: B_l ≤ 0 ≤ B_u (pairs as returned by `learnable_bounds`)."""
    with torch.no_grad():
        for lo, hi in zip(params[0::2], params[1::2], strict=True):
            lo.clamp_(max=0)
            hi.clamp_(min=0)
            hi.copy_(torch.maximum(hi, lo + _EPS))
