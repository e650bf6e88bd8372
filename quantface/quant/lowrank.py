"""Rank-r split of a weight, W = L1 L2 + R, for a 16-bit low-rank branch beside a quantized R.

SVDQuant's idea: after smoothing, the weight has a few large singular directions that carry its
outliers; a 16-bit branch L1 L2 (the top-r SVD) takes them and only the residual R, of much
smaller range, is quantized. A conv weight [O, I, kh, kw] is split as the matrix [O, I*kh*kw]; its
branch is then a kh x kw conv I -> r (L2) followed by a 1x1 conv r -> O (L1).

L1, L2 are rounded to FP16 (the branch's storage precision) *before* R is formed, so
`L1 L2 + R == W` holds to float rounding and the transformed layer stays exact in FP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def capped_rank(rank: int, out_features: int, fan_in: int, max_fraction: float = 0.5) -> int:
    """The rank actually used: at most a fraction (half) of the smaller side of the matrix, so a
    tiny layer is not all branch."""
    return max(0, min(int(rank), int(max_fraction * min(out_features, fan_in))))


def _svd_r(w2: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    u, sv, vh = torch.linalg.svd(w2.double(), full_matrices=False)
    root = sv[:rank].sqrt()
    l1 = (u[:, :rank] * root).half().float()
    l2 = (root[:, None] * vh[:rank]).half().float()
    return l1, l2


@torch.no_grad()
def lowrank_split(
    w: Tensor,
    rank: int,
    quantize: Callable[[Tensor], Tensor] | None = None,
    iters: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """(L1 [O, r], L2 [r, fan_in], R shaped like w) with w = L1 @ L2 + R (reshaped).

    With `quantize` and iters > 1, SVDQuant's iterative refinement: the branch is refit to
    `W - Q(R)` so it also absorbs the residual's quantization error; the iterate with the least
    weight error ||W - L1 L2 - Q(R)|| is kept (deepcompressor keeps the least output error, which
    needs layer inputs; the weight error is the input-free proxy).
    """
    w2 = w.detach().reshape(w.shape[0], -1).float()
    if rank <= 0:
        return w2.new_zeros(w2.shape[0], 0), w2.new_zeros(0, w2.shape[1]), w.detach().clone()
    target = w2
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(max(1, iters)):
        l1, l2 = _svd_r(target, rank)
        r = w2 - l1 @ l2
        if quantize is None:
            return l1, l2, r.reshape(w.shape)
        qr = quantize(r.reshape(w.shape)).reshape_as(r)
        err = float((r - qr).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, l1, l2)
        target = w2 - qr
    _, l1, l2 = best
    return l1, l2, (w2 - l1 @ l2).reshape(w.shape)
