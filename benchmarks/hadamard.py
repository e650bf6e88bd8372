"""The online Hadamard transform: ms per call at a (tokens, n) float32 input, four ways.

    PYTHONPATH=. python benchmarks/hadamard.py [--threads 1] [--repeats 15] [--tokens 4096]

- new: `hadamard_transform` (A^T X H_b for Hn = A (x) H_b, or one dense matmul if b < 16);
- old: the previous algorithm (butterfly per level by `torch.stack`, then a K x K einsum), kept
  here only for this comparison;
- dense: `x @ Hn` with the full matrix built beforehand;
- kron: a pure-torch Kronecker reference in the style of QuaRot's CPU path (butterflies written
  into a preallocated buffer down to the K-sized axis, then a broadcast K x K matmul).

Each figure is the median (and min/max) of `--repeats` timed calls after two warm-ups, on
`--threads` torch threads (1 by default: a shared machine gives noisy multi-thread numbers). The
second table is the crossover behind `MIN_RIGHT`: dense against the two-factor product forced
to b = 8 and b = 16 (where b divides the 2^m of n).
All four ways are checked against the dense product before timing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from quantface.quant.hadamard import (
    MIN_RIGHT,
    hadamard_factor,
    hadamard_matrix,
    hadamard_transform,
    kron_transform,
    paley_hadamard,
)

SIZES = (320, 640, 960, 1280, 2560, 5120)
CROSSOVER_SIZES = (48, 64, 96, 128, 160, 192, 256, 320, 640)
CROSSOVER_SPLITS = (8, 16)


def _old_butterfly(x: Tensor) -> Tensor:
    """The previous `fwht`: one `torch.stack` of (a + b, a - b) per level."""
    n = x.shape[-1]
    h, y = 1, x.reshape(-1, n)
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)


def old_transform(x: Tensor) -> Tensor:
    """The previous `hadamard_transform` for a composite n along the last dim."""
    n = x.shape[-1]
    k, m = hadamard_factor(n)
    if k == 1:
        return _old_butterfly(x) / math.sqrt(n)
    y = _old_butterfly(x.reshape(*x.shape[:-1], k, m))
    y = torch.einsum("...ab,ac->...cb", y, paley_hadamard(k).to(x))
    return y.reshape(x.shape) / math.sqrt(n)


def kron_reference(x: Tensor, hk_t: Tensor) -> Tensor:
    """Pure-torch H_K (x) H_m: halve the 2^m axis level by level into a ping-pong buffer, then
    apply H_K^T (`hk_t`, K x K) to the remaining K-axis by a broadcast matmul."""
    n, k = x.shape[-1], hk_t.shape[0]
    src = x.reshape(-1, n, 1).clone()
    dst = torch.empty_like(src)
    while src.shape[1] > k:
        s = src.view(src.shape[0], src.shape[1] // 2, 2, src.shape[2])
        d = dst.view(s.shape)
        torch.add(s[:, :, 0], s[:, :, 1], out=d[:, :, 0])
        torch.sub(s[:, :, 0], s[:, :, 1], out=d[:, :, 1])
        src, dst = d.view(s.shape[0], s.shape[1], -1), s.view(s.shape[0], s.shape[1], -1)
    if k > 1:
        src = hk_t @ src
    return src.reshape(x.shape) / math.sqrt(n)


def time_ms(fn: Callable[[], Tensor], repeats: int) -> tuple[float, float, float]:
    """(median, min, max) wall ms of `fn` over `repeats` calls after two warm-ups."""
    with torch.no_grad():
        fn(), fn()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs), min(runs), max(runs)


def _cell(t: tuple[float, float, float]) -> str:
    return f"{t[0]:8.2f} ({t[1]:.2f}-{t[2]:.2f})"


def _check(name: str, y: Tensor, ref: Tensor) -> None:
    err = (y - ref).abs().max().item()
    if err > 1e-4:
        raise AssertionError(f"{name} differs from the dense product by {err:.2e}")


def main_table(tokens: int, repeats: int) -> None:
    """ms per call for the model widths: new vs old vs dense vs the Kronecker reference."""
    cols = ("new", "old", "dense", "kron")
    print(f"\n(tokens, n) = ({tokens}, n) float32; ms median (min-max); ratio = new / best other")
    print(f"{'n':>5} " + " ".join(f"{c:>22}" for c in cols) + "   ratio")
    for n in SIZES:
        x = torch.randn(tokens, n)
        h = hadamard_matrix(n, torch.float32)
        k, _ = hadamard_factor(n)
        hk_t = paley_hadamard(k).T.float() if k > 1 else torch.ones(1, 1)
        fns = {
            "new": partial(hadamard_transform, x),
            "old": partial(old_transform, x),
            "dense": partial(torch.matmul, x, h),
            "kron": partial(kron_reference, x, hk_t),
        }
        ref = x @ h
        for name, fn in fns.items():
            _check(name, fn(), ref)
        t = {name: time_ms(fn, repeats) for name, fn in fns.items()}
        best_other = min(t[c][0] for c in cols[1:])
        cells = " ".join(f"{_cell(t[c]):>22}" for c in cols)
        print(f"{n:>5} {cells}   {t['new'][0] / best_other:5.2f}", flush=True)


def crossover_table(tokens: int, repeats: int) -> None:
    """Dense `x @ Hn` vs the two-factor product with H_b forced to each of `CROSSOVER_SPLITS`."""
    print(f"\ncrossover (MIN_RIGHT = {MIN_RIGHT}): ms median (min-max), '-' where b does not fit")
    print(f"{'n':>5} {'dense':>22} " + " ".join(f"{f'b = {b}':>22}" for b in CROSSOVER_SPLITS))
    for n in CROSSOVER_SIZES:
        x = torch.randn(tokens, n)
        h = hadamard_matrix(n, torch.float32)
        cells = [_cell(time_ms(partial(torch.matmul, x, h), repeats))]
        for b in CROSSOVER_SPLITS:
            if hadamard_factor(n)[1] % b:
                cells.append("-")
                continue
            _check(f"b = {b}", kron_transform(x, b), x @ h)
            cells.append(_cell(time_ms(partial(kron_transform, x, b), repeats)))
        print(f"{n:>5} " + " ".join(f"{c:>22}" for c in cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--no-crossover", action="store_true", help="skip the MIN_RIGHT table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min) at start: {load}")
    main_table(args.tokens, args.repeats)
    if not args.no_crossover:
        crossover_table(args.tokens, args.repeats)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average at end: {load}")


if __name__ == "__main__":
    main()
