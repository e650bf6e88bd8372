"""AdaRound (Nagel et al., ICML 2020): learn whether each weight rounds down or up.

Q-Diffusion's weight recipe (its code's `adaptive_rounding.py`): with the per-channel step
Δ and zero point z of a calibrated weight quantizer,

    W_q = Δ · (clamp(⌊W/Δ⌋ + h(V) + z, qmin, qmax) − z),   h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)

ζ = 1.1, γ = −0.1 (the rectified sigmoid), V initialised so that h(V) = frac(W/Δ) (the soft
weight starts at W itself). The regularizer Σ (1 − |2h(V) − 1|^β), with β annealed from 20 to 2
after a warm-up, pushes every h(V) to 0 or 1; at the end the rounding is hardened to
⌊W/Δ⌋ + 1[V ≥ 0].

The hardened weights are written back into the layer's FP weight *on the quantizer's grid*
(`(q − z)·Δ`), so the layer's unchanged round-to-nearest weight quantizer reproduces the learned
rounding exactly and the saved model format is the same as every other method's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quantface.quant.layers import QuantLayerMixin
from quantface.quant.quantizer import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeight(nn.Module):
    """Learnable rounding of one weight tensor on a calibrated (static) quantizer's grid."""

    def __init__(self, weight: Tensor, quantizer: UniformQuantizer) -> None:
        super().__init__()
        if quantizer.spec.dynamic or not quantizer.scale.numel():
            raise ValueError("AdaRound needs a calibrated static weight quantizer")
        scale, zero = quantizer.scale.detach(), quantizer.zero_point.detach()
        self.qmin, self.qmax = quantizer.spec.qmin, quantizer.spec.qmax
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        x = weight.detach() / scale
        self.register_buffer("floor", torch.floor(x))
        rest = (x - self.floor).clamp(1e-4, 1 - 1e-4)
        # h(V) = rest  <=>  sigmoid(V) = (rest - γ) / (ζ - γ)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, hard: bool = False) -> Tensor:
        up = (self.v >= 0).to(self.floor.dtype) if hard else self.h()
        q = torch.clamp(self.floor + up + self.zero, self.qmin, self.qmax)
        return (q - self.zero) * self.scale

    def regularizer(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def undecided(self) -> float:
        """Fraction of rounding variables not yet at 0 or 1 (1e-3 tolerance)."""
        h = self.h().detach()
        return ((h > 1e-3) & (h < 1 - 1e-3)).float().mean().item()


class LayerAdaRound(nn.Module):
    """AdaRound for one quantized layer; a split layer has one variable set per input half."""

    def __init__(self, layer: QuantLayerMixin) -> None:
        super().__init__()
        w = layer.weight
        if layer.split:
            halves = [(w[:, : layer.split], layer.weight_quantizer)]
            halves.append((w[:, layer.split :], layer.weight_quantizer_1))
        else:
            halves = [(w, layer.weight_quantizer)]
        self.parts = nn.ModuleList(AdaRoundWeight(t, q) for t, q in halves)

    def forward(self, hard: bool = False) -> Tensor:
        ws = [p(hard) for p in self.parts]
        return ws[0] if len(ws) == 1 else torch.cat(ws, dim=1)

    def regularizer(self, beta: float) -> Tensor:
        return sum(p.regularizer(beta) for p in self.parts)


def temperature(step: int, steps: int, warmup: float, b_range: tuple[float, float]) -> float | None:
    """BRECQ's LinearTempDecay: None during warm-up (no rounding loss), then β from b0 to b1."""
    start = warmup * steps
    if step < start:
        return None
    rel = (step - start) / max(steps - start, 1)
    b0, b1 = b_range
    return b1 + (b0 - b1) * max(0.0, 1.0 - rel)


@contextlib.contextmanager
def adaround(layers: dict[str, QuantLayerMixin]) -> Iterator[dict[str, LayerAdaRound]]:
    """Inside the block the layers use soft-rounded weights; on exit the hard rounding is baked.

    The layers' own weights are frozen meanwhile (only the rounding variables learn); on exit
    each weight becomes its hardened grid value, so `weight_quantizer(weight)` equals it exactly.
    """
    rounders = {n: LayerAdaRound(m) for n, m in layers.items()}
    for n, m in layers.items():
        r = rounders[n]
        m.quantized_weight = r.forward  # instance override of the method, removed below
    try:
        yield rounders
    finally:
        for n, m in layers.items():
            del m.quantized_weight
            with torch.no_grad():
                m.weight.copy_(rounders[n](hard=True))
