"""Quantization-aware LoRA on the weights (EfficientDM's QALoRA; reused by QuantFace's QD-LoRA).

EfficientDM (methods.md §7) adds a rank-r update *before* the weight quantizer,
`W_q = Q_w(W + B A)`, so the update is trained through the fake quantization and can be merged
into W afterwards at no inference cost. Linear: A ∈ R^{r×in} (Kaiming-uniform), B = 0 ∈ R^{out×r};
Conv2d: A is a kh×kw conv C_in → r, B a 1×1 conv r → C_out, whose product is the full-size
kernel B·A. `weight_lora` installs the update on the given layers and merges it into their
weights on exit (the weight quantizer is untouched, so the merged layer computes exactly what the
last training step computed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quantface.quant.layers import QuantLayerMixin


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


@contextlib.contextmanager
def weight_lora(
    layers: dict[str, QuantLayerMixin], ranks: dict[str, int], seed: int = 0
) -> Iterator[dict[str, WeightLoRA]]:
    """Layers compute Q_w(W + B A) inside the block; on exit W <- W + B A (merged)."""
    gen = torch.Generator().manual_seed(seed)
    loras = {n: WeightLoRA(m.weight, ranks[n], gen) for n, m in layers.items() if ranks[n] > 0}
    for n, lora in loras.items():
        m = layers[n]
        m.quantized_weight = lambda m=m, lora=lora: m.quantize_weight(m.weight + lora.delta())
    try:
        yield loras
    finally:
        for n, lora in loras.items():
            m = layers[n]
            del m.quantized_weight
            with torch.no_grad():
                m.weight.copy_(m.weight + lora.delta())
