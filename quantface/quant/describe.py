"""A quantized model's quantizers in words, read from its layout (what really ran, not a claim).

Why: methods differ in their quantizers as well as their algorithms (per-tensor static vs per-token
dynamic activations moves PSNR-FP at A4 by several dB), so every table row must say which
quantizers produced it. This summary is computed from the saved layout of each quantized model
and travels with its cost (cost.json, cost.csv) into the tables' footnotes.
"""

from __future__ import annotations

from collections import Counter

from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import LayerQuant

FULL_PRECISION = 16  # a spec at 16 bits or more is an FP/high-precision exception, not a grid


def spec_words(spec: QuantSpec) -> str:
    """E.g. 'per-token dynamic asym' or 'per-channel asym'."""
    grain = (
        f"per-group({spec.group_size})"
        if spec.granularity == "group"
        else f"per-{spec.granularity}"
    )
    when = " dynamic" if spec.dynamic else (" static" if spec.granularity != "channel" else "")
    return f"{grain}{when} {'sym' if spec.symmetric else 'asym'}"


def _shares(words: list[str]) -> str:
    counts = Counter(words)
    total = sum(counts.values())
    parts = [w if n == total else f"{w} {100 * n / total:.0f}%" for w, n in counts.most_common()]
    return ", ".join(parts)


def quantizer_summary(layout: dict[str, LayerQuant]) -> str:
    """'A: <activation quantizers>; W: <weight quantizers>', each with its share of the sites
    quantized below 16 bits (a matmul's two operands are both activations)."""
    acts, weights = [], []
    for lq in layout.values():
        if lq.a.bits < FULL_PRECISION:
            acts.append(spec_words(lq.a))
        if lq.w.bits < FULL_PRECISION:
            (acts if lq.kind == "matmul" else weights).append(spec_words(lq.w))
    if not acts and not weights:
        return "FP32 (nothing quantized)"
    return f"A: {_shares(acts) or 'none'}; W: {_shares(weights) or 'none'}"
