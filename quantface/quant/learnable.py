"""Learned quantizer step sizes (LSQ, Esser et al. 2020) for methods that train their quantizers.

`UniformQuantizer` keeps its step size as a *buffer* so a saved model carries frozen quantizers.
Methods that learn step sizes (QuantFace's QD-LoRA, EfficientDM, Q-Diffusion's activation step
sizes) turn the buffers into Parameters for the duration of their optimisation and back again,
so the saved model format is the same for every method. `fake_quant` already lets gradients reach
the scale through both `x / scale` (inside the straight-through rounding) and `(q - z) * scale`,
which is LSQ's estimator. LSQ's gradient rescaling by 1/sqrt(N * Q_p) is left out: all our
optimisers are Adam, which normalises each parameter's gradient scale anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from quantface.quant.layers import quantizer_roles
from quantface.quant.quantizer import UniformQuantizer

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
