"""Time the SVD work SVDQuant does on one full-size layer, the old way and the current way.

    PYTHONPATH=. python benchmarks/svd_layer.py [--out 10240] [--in 1280] [--grids 2] [--iters 2]

SD-2.1's largest branch layer is a 1280-channel transformer block's `ff.net.0.proj` (GEGLU,
[10240, 1280]). Per layer SVDQuant takes one SVD_r per smoothing candidate (2 * grids - 1 of
them) and one per branch-refit iterate. Before: each candidate a full FP32 SVD (batched), each
iterate a full FP64 SVD. Now (quant/lowrank.py): float64 top-r from the Gram matrix, one W^T W
shared by the candidates, and iterate 0 reuses the chosen candidate's factors. Prints seconds of
each and the largest difference of the branch L1 L2 (FP16 factors) between the two.
"""

from __future__ import annotations

import argparse
import time

import torch

from quantface.quant.lowrank import scaled_svd_factors, svd_factors


def old_factors(w: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    u, sv, vh = torch.linalg.svd(w.to(dtype), full_matrices=False)
    root = sv[..., :rank].sqrt()
    return (u[..., :rank] * root[..., None, :]).half().float(), (
        root[..., None] * vh[..., :rank, :]
    ).half().float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=int, default=10240)
    ap.add_argument("--in", dest="fan_in", type=int, default=1280)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--grids", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.out, args.fan_in, generator=g) / args.fan_in**0.5
    k = 2 * args.grids - 1
    s = torch.rand(k, args.fan_in, generator=g) + 0.5
    ws = w[None] * s[:, None, :]

    t0 = time.perf_counter()
    old_c = old_factors(ws, args.rank, torch.float32)
    old_i = [old_factors(ws[0], args.rank, torch.float64) for _ in range(args.iters)]
    t_old = time.perf_counter() - t0

    t0 = time.perf_counter()
    gram = w.double().T @ w.double() if args.out >= args.fan_in else None
    new_c = scaled_svd_factors(w, s, args.rank, gram)
    new_i = [svd_factors(ws[0], args.rank) for _ in range(args.iters - 1)]  # iterate 0 reused
    t_new = time.perf_counter() - t0

    diff = max(
        float((old_c[0][j] @ old_c[1][j] - new_c[0][j] @ new_c[1][j]).abs().max()) for j in range(k)
    )
    diff_i = float((old_i[0][0] @ old_i[0][1] - new_c[0][0] @ new_c[1][0]).abs().max())
    scale = float(w.abs().max())
    print(
        f"layer [{args.out}, {args.fan_in}] rank {args.rank}: {k} candidates + {args.iters} "
        f"refit iterates, {args.threads} threads"
    )
    print(f"before (full SVDs: FP32 candidates, FP64 iterates): {t_old:.1f} s")
    print(f"after  (float64 Gram top-r, shared W^T W, iterate 0 reused): {t_new:.1f} s")
    print(
        f"max |L1 L2| difference: candidates (vs FP32 SVD) {diff:.2e}, iterate 0 (vs FP64 SVD) "
        f"{diff_i:.2e}; max |W| {scale:.2e}; {len(new_i)} extra iterate(s) computed"
    )


if __name__ == "__main__":
    main()
