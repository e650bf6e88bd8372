"""Evenly spaced subsets: how a scale run measures a few units of a loop over many.

Why: some stages loop over hundreds of units at SD-2.1 size (QuantFace-MP's sensitivity pass,
one restoration per (site, candidate bits), ~2,800; Q-Diffusion's per-unit reconstruction, ~120
units, each capture running the network up to its unit). A run that only has to exercise every
stage and measure its per-unit cost (config/scale.yaml, benchmarks/paper_cost.py) takes a few
units spread over the whole order, so early and deep units are both in the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def spaced_subset(items: Sequence[T], limit: int | None) -> list[T] | None:
    """`limit` items evenly spaced over `items` (execution order), or None for all of them."""
    if limit is None or limit >= len(items):
        return None
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
