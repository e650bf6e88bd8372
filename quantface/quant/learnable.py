"""Learned quantizer step sizes (LSQ, Esser et al. 2020) and zero points for trained quantizers.

`UniformQuantizer` keeps its step size as a *buffer* so a saved model carries frozen quantizers.
Methods that learn step sizes (QuantFace's QD-LoRA, EfficientDM, Q-Diffusion's activation step
sizes) turn the buffers into Parameters for the duration of their optimisation and back again,
so the saved model format is the same for every method. `fake_quant` already lets gradients reach
the scale through both `x / scale` (inside the straight-through rounding) and `(q - z) * scale`,
which is LSQ's estimator. LSQ's gradient rescaling by 1/sqrt(N * Q_p) is left out: all our
optimisers are Adam, which normalises each parameter's gradient scale anyway.

Zero points (EfficientDM's `zp_list`) are learned the same way by `learnable_zero_points`: a
float Parameter per quantizer, its gradient the one through `clamp(round(x/Δ) + z) − z` (zero
inside the range, −1 · Δ per clipped element). EfficientDM adds its float zp unrounded; here the
forward uses `clamp(round_ste(zp), qmin, qmax)`, the same gradient (straight-through), so the
quantizer stays a b-bit integer grid with zero on it, the saved z is an integer code as the
packed format and the integer kernels need, and the saved model computes what the last step did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quantface.quant.quantizer import UniformQuantizer, round_ste
from quantface.quant.wrap import quantizer_roles

_MIN_SCALE = 1e-8


def static_quantizers(root: nn.Module, which: str) -> list[UniformQuantizer]:
    """Calibrated static quantizers of the given role (a matmul's operands are activations)."""
    return [
        q
        for q, role in quantizer_roles(root)
        if not q.spec.dynamic and q.scale.numel() and which in ("all", role)
    ]


@contextlib.contextmanager
def learnable_scales(root: nn.Module, which: str = "all") -> Iterator[list[nn.Parameter]]:
    """Static quantizer scales under `root` as trainable Parameters inside the `with` block.

    `which`: "all", "act" (activation and matmul-operand quantizers) or "weight". On exit the
    learned values are written back as buffers, clamped positive, so nothing else changes.
    """
    if which not in ("all", "act", "weight"):
        raise ValueError(f"which must be all|act|weight, got {which!r}")
    chosen = static_quantizers(root, which)
    params = []
    for q in chosen:
        p = nn.Parameter(q.scale.detach().clone())
        del q._buffers["scale"]
        q.register_parameter("scale", p)
        params.append(p)
    try:
        yield params
    finally:
        for q in chosen:
            value = q._parameters.pop("scale").detach().clamp_min(_MIN_SCALE)
            q.register_buffer("scale", value)


def clamp_scales_(params: list[nn.Parameter]) -> None:
    """Keep learned step sizes positive after an optimiser step."""
    with torch.no_grad():
        for p in params:
            p.clamp_(min=_MIN_SCALE)


def _integer_zero(q: UniformQuantizer) -> Tensor:
    return torch.clamp(round_ste(q.zero_param), q.spec.qmin, q.spec.qmax)


def _zero_pre_hook(q: UniformQuantizer, args: tuple) -> None:
    q.zero_point = _integer_zero(q)  # the buffer holds the differentiable value


@contextlib.contextmanager
def learnable_zero_points(root: nn.Module, which: str = "act") -> Iterator[list[nn.Parameter]]:
    """Zero points of the asymmetric static quantizers under root as Parameters (`zero_param`).

    Symmetric quantizers keep z = 0. On exit the rounded, clamped learned values are written
    back as the `zero_point` buffers, so the saved format is unchanged.
    """
    chosen = [q for q in static_quantizers(root, which) if not q.spec.symmetric]
    params, handles = [], []
    for q in chosen:
        q.register_parameter("zero_param", nn.Parameter(q.zero_point.detach().clone().float()))
        params.append(q.zero_param)
        handles.append(q.register_forward_pre_hook(_zero_pre_hook))
    try:
        yield params
    finally:
        for h in handles:
            h.remove()
        for q in chosen:
            with torch.no_grad():
                q.zero_point = _integer_zero(q).detach().clone()
            del q._parameters["zero_param"]
