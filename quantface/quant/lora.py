"""Quantization-aware LoRA on the weights (EfficientDM's QALoRA).

EfficientDM (`quant_scripts/quant_layer.py: QuantModule_intnlora`) keeps each layer's weight as
the integer codes of its naive PTQ model and adds a rank-r update to their dequantization
*before* the weight quantizer:

    W_q = Q_w(deq(W_int) + B A),   deq(W_int) = (W_int − z) Δ,

with Δ, z the weight quantizer's own (the code aliases the dequantizer's Δ and z to the
quantizer's, so a learned Δ moves both). The update is thus trained through the fake quantization
on top of the already-rounded weight, not of the FP one: B A must move a weight past half a step
to change its code. Linear: A ∈ R^{r×in} (Kaiming-uniform), B = 0 ∈ R^{out×r}; Conv2d: A is a
kh×kw conv C_in → r, B a 1×1 conv r → C_out, whose product is the full-size kernel B·A.

`weight_lora` takes the codes W_int = clamp(round(W/Δ) + z) on entry, installs the update and on
exit merges it: W <- deq(W_int) + B A with the final Δ, so the weight quantizer (untouched) makes
the merged layer compute exactly what the last training step computed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quantface.quant.layers import QuantLayerMixin
from quantface.quant.pack import dequantize, weight_codes, weight_parts


class WeightLoRA(nn.Module):
    """delta = B A, shaped like the host's weight."""

    def __init__(self, weight: Tensor, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        self.shape = weight.shape
        a = torch.empty(rank, fan_in)
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear/peft do
        a.uniform_(-bound, bound, generator=generator)
        self.a = nn.Parameter(a.to(weight.device))
        self.b = nn.Parameter(torch.zeros(out, rank, device=weight.device))

    def delta(self) -> Tensor:
        return (self.b @ self.a).reshape(self.shape)


def integer_weight(layer: QuantLayerMixin) -> list[Tensor]:
    """The codes W_int of the layer's weight under its weight quantizer(s), one per split half."""
    with torch.no_grad():
        return [weight_codes(q, layer.weight[:, cols]) for _, q, cols in weight_parts(layer)]


def dequantized_weight(layer: QuantLayerMixin, codes: list[Tensor]) -> Tensor:
    """deq(W_int) = (W_int − z) Δ with the quantizers' *current* Δ (a learned one included)."""
    parts = [dequantize(c, q) for c, (_, q, _) in zip(codes, weight_parts(layer), strict=True)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@contextlib.contextmanager
def weight_lora(
    layers: dict[str, QuantLayerMixin],
    ranks: dict[str, int],
    seed: int = 0,
    on_codes: bool = True,
) -> Iterator[dict[str, WeightLoRA]]:
    """Layers compute Q_w(deq(W_int) + B A) inside the block; on exit W <- deq(W_int) + B A.

    `on_codes=False` adds the update to the FP weight instead, Q_w(W + B A) (merged as
    W <- W + B A): not EfficientDM's form, kept so its effect can be measured (an ablation).
    """
    gen = torch.Generator().manual_seed(seed)
    loras = {n: WeightLoRA(m.weight, ranks[n], gen) for n, m in layers.items() if ranks[n] > 0}
    codes = {n: integer_weight(layers[n]) for n in loras} if on_codes else {}

    def base(m: QuantLayerMixin, n: str) -> Tensor:
        return dequantized_weight(m, codes[n]) if on_codes else m.weight

    for n, lora in loras.items():
        m = layers[n]
        m.quantized_weight = lambda m=m, n=n, lora=lora: m.quantize_weight(
            base(m, n) + lora.delta()
        )
    try:
        yield loras
    finally:
        for n, lora in loras.items():
            m = layers[n]
            del m.quantized_weight
            with torch.no_grad():
                m.weight.copy_(base(m, n) + lora.delta())
