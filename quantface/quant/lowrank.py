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


def svd_factors(w2: Tensor, rank: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """FP16-rounded (L1 [..., O, r], L2 [..., r, I]) of the top-r SVD of w2 [..., O, I], batched
    over leading dims; the split of sqrt(sigma) keeps both factors in FP16's range. `dtype` is
    the SVD's precision (FP32 suffices to rank smoothing candidates)."""
    u, sv, vh = torch.linalg.svd(w2.to(dtype), full_matrices=False)
    root = sv[..., :rank].sqrt()
    l1 = (u[..., :rank] * root[..., None, :]).half().float()
    l2 = (root[..., None] * vh[..., :rank, :]).half().float()
    return l1, l2


@torch.no_grad()
def lowrank_split(w: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """(L1 [O, r], L2 [r, fan_in], R shaped like w) with w = L1 @ L2 + R (reshaped)."""
    w2 = w.detach().reshape(w.shape[0], -1).float()
    if rank <= 0:
        return w2.new_zeros(w2.shape[0], 0), w2.new_zeros(0, w2.shape[1]), w.detach().clone()
    l1, l2 = svd_factors(w2, rank)
    return l1, l2, (w2 - l1 @ l2).reshape(w.shape)


@torch.no_grad()
def refit_lowrank(
    w: Tensor,
    rank: int,
    quantize: Callable[[Tensor], Tensor],
    error: Callable[[Tensor, Tensor, Tensor], float],
    iters: int,
    early_stop: bool = True,
) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """SVDQuant's iterative branch: refit L1 L2 to `W - Q(R)` so it absorbs R's quantization error.

    Iteration i fits L = SVD_r(W - Q(R_{i-1})) (Q(R_{-1}) = 0: plain SVD), sets R_i = W - L and
    scores `error(L1, L2, Q(R_i))` (the layer's output error, computed by the caller); the best
    iterate (ties: the later one) is kept and, with `early_stop`, the loop ends at the first
    iterate that is worse than the best. As deepcompressor's `QuantLowRankCalibrator`
    (`num_iters`, `early_stop`). w is 2-D [O, fan_in]. Returns (L1, L2, R, errors per iterate).
    """
    w2 = w.detach().float()
    target, best, errors = w2, None, []
    for _ in range(max(1, iters)):
        l1, l2 = svd_factors(target, rank)
        qr = quantize(w2 - l1 @ l2)
        errors.append(float(error(l1, l2, qr)))
        if best is None or errors[-1] <= best[0]:
            best = (errors[-1], l1, l2)
        elif early_stop:
            break
        target = w2 - qr
    _, l1, l2 = best
    return l1, l2, w2 - l1 @ l2, errors
