"""Seeded bootstrap over images: an interval per table cell and whether a lead is real.

Why: a table cell is a mean over a few dozen test images, and two methods' means can differ by
less than the images' own spread. Each cell gets a 95% percentile interval of its mean, from
`N_BOOT` resamples of its images; a lead of one method over another is judged on the *paired*
difference (both methods' scores of the same resampled images), which removes the variation that
the images share, so a lead is significant when the interval of the mean difference excludes 0.
The resampling indices depend only on (seed, number of images), so every cell and every pair of
a table use the same resamples, and the same per-image scores give the same intervals.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@lru_cache(maxsize=32)
def bootstrap_indices(n: int, seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n) image indices drawn with replacement, fixed by (seed, n); drawn once per
    (n, seed, n_boot) for a whole table, read-only."""
    idx = np.random.default_rng([seed, n]).integers(0, n, size=(n_boot, n))
    idx.flags.writeable = False
    return idx


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-image `values`."""
    values = np.asarray(values, dtype=np.float64)
    return interval(values[bootstrap_indices(len(values), seed, n_boot)].mean(axis=1))


def paired_difference_interval(
    a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = N_BOOT
) -> tuple[float, float]:
    """95% paired-bootstrap interval of mean(a - b), `a` and `b` scored on the same images."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: {a.shape} vs {b.shape}")
    return mean_interval(a - b, seed, n_boot)


def lead_is_significant(
    best: np.ndarray, second: np.ndarray, higher_is_better: bool, seed: int, n_boot: int = N_BOOT
) -> bool:
    """Whether `best` beats `second` with the interval of the paired difference above 0."""
    lo, hi = paired_difference_interval(best, second, seed, n_boot)
    return lo > 0 if higher_is_better else hi < 0
