"""Rank-r split of a weight, W = L1 L2 + R, for a 16-bit low-rank branch beside a quantized R.

SVDQuant's idea: after smoothing, the weight has a few large singular directions that carry its
outliers; a 16-bit branch L1 L2 (the top-r SVD) takes them and only the residual R, of much
smaller range, is quantized. A conv weight [O, I, kh, kw] is split as the matrix [O, I*kh*kw]; its
branch is then a kh x kw conv I -> r (L2) followed by a 1x1 conv r -> O (L1).

L1, L2 are rounded to FP16 (the branch's storage precision) *before* R is formed, so
`L1 L2 + R == W` holds to float rounding and the transformed layer stays exact in FP.

How the top-r SVD is computed. deepcompressor (`nn/patch/lowrank.py: LowRankBranch`) takes the
full SVD of the weight in float64 (`torch.linalg.svd(weight.double())`) and keeps the first r
triplets, for the final branch, every refit iterate and every smoothing candidate alike. Here the
precision is the same (float64) but only the r triplets that are kept are formed: from the
eigendecomposition of the float64 Gram matrix of the smaller side (W^T W [I, I] or W W^T [O, O];
eigenvalues sigma^2), the other side's vectors as W v / sigma. That is the same top-r factors to
float64 rounding (far below the FP16 rounding the factors then get) at a fraction of the cost of a
full SVD on a CPU (SD-2.1's [10240, 1280] feed-forward weight: measured in README "Paper-scale
bill"). Where the Gram matrix cannot resolve the r-th singular value (sigma_r^2 below
`GRAM_FLOOR` x sigma_1^2, i.e. a nearly rank-deficient weight), the full float64 SVD is taken, as
in deepcompressor. Candidates that differ only by a column scale W diag(s_k) (the smoothing
search) share one W^T W: their Gram matrices are diag(s_k) W^T W diag(s_k), formed without
another product with W (`scaled_svd_factors`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def capped_rank(rank: int, out_features: int, fan_in: int, max_fraction: float = 0.5) -> int:
    """The rank actually used: at most a fraction (half) of the smaller side of the matrix, so a
    tiny layer is not all branch."""
    return max(0, min(int(rank), int(max_fraction * min(out_features, fan_in))))


GRAM_FLOOR = 1e-8  # sigma_r^2 / sigma_1^2 below which the Gram route falls back to the full SVD


def _split(u: Tensor, sv: Tensor, vh: Tensor) -> tuple[Tensor, Tensor]:
    """FP16-rounded (L1 = U sqrt(S), L2 = sqrt(S) V^T); the split keeps both in FP16's range."""
    root = sv.sqrt()
    l1 = (u * root[..., None, :]).half().float()
    l2 = (root[..., None] * vh).half().float()
    return l1, l2


def _full_svd_factors(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    return _split(u[..., :rank], sv[..., :rank], vh[..., :rank, :])


def _top_eig(g: Tensor, rank: int) -> tuple[Tensor, Tensor, bool]:
    """(sigma [..., r] descending, eigenvectors [..., n, r], resolved) of a Gram matrix g."""
    ev, vec = torch.linalg.eigh(g)  # ascending
    top = ev[..., -rank:].flip(-1)
    resolved = bool((top[..., -1] > GRAM_FLOOR * ev[..., -1]).all()) and bool(
        ev[..., -1].gt(0).all()
    )
    return top.clamp_min(0).sqrt(), vec[..., -rank:].flip(-1), resolved


def svd_factors(w2: Tensor, rank: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """FP16-rounded (L1 [..., O, r], L2 [..., r, I]) of the top-r SVD of w2 [..., O, I], batched
    over leading dims, computed in `dtype` (float64, as deepcompressor) from the Gram matrix of
    the smaller side (module docstring); the full SVD where that cannot resolve sigma_r."""
    w = w2.to(dtype)
    o, i = w.shape[-2:]
    rank = min(rank, o, i)
    if rank <= 0:
        return w2.new_zeros(*w2.shape[:-1], 0), w2.new_zeros(*w2.shape[:-2], 0, i)
    if o < i:  # wide: W W^T [O, O], left vectors from it
        sv, u, ok = _top_eig(w @ w.mT, rank)
        if ok:
            return _split(u, sv, (u.mT @ w) / sv[..., :, None])
    else:  # tall or square: W^T W [I, I], right vectors from it
        sv, v, ok = _top_eig(w.mT @ w, rank)
        if ok:
            return _split((w @ v) / sv[..., None, :], sv, v.mT)
    return _full_svd_factors(w, rank)


def scaled_svd_factors(
    w2: Tensor, s: Tensor, rank: int, gram: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """`svd_factors` of W diag(s_k) for every row s_k of s [K, I] (w2 [O, I]), batched; for a
    tall or square W the K Gram matrices are diag(s_k) G diag(s_k) from one G = W^T W (pass it
    as `gram` to reuse it across calls; float64). Returns L1 [K, O, r], L2 [K, r, I]."""
    w = w2.double()
    sk = s.double()
    o, i = w.shape
    rank = min(rank, o, i)
    ws = w[None] * sk[:, None, :]
    if rank <= 0 or o < i:
        return svd_factors(ws, rank)
    g = gram if gram is not None else w.mT @ w
    sv, v, ok = _top_eig(sk[:, :, None] * g[None] * sk[:, None, :], rank)
    if not ok:
        return _full_svd_factors(ws, rank)
    return _split((ws @ v) / sv[..., None, :], sv, v.mT)


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
    first: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """SVDQuant's iterative branch: refit L1 L2 to `W - Q(R)` so it absorbs R's quantization error.

    Iteration i fits L = SVD_r(W - Q(R_{i-1})) (Q(R_{-1}) = 0: plain SVD), sets R_i = W - L and
    scores `error(L1, L2, Q(R_i))` (the layer's output error, computed by the caller); the best
    iterate (ties: the later one) is kept and, with `early_stop`, the loop ends at the first
    iterate that is worse than the best. As deepcompressor's `QuantLowRankCalibrator`
    (`num_iters`, `early_stop`). w is 2-D [O, fan_in]. `first`: iterate 0's factors (the plain
    SVD_r(W)) where the caller already has them (SVDQuant's smoothing search), so that SVD is not
    taken twice. Returns (L1, L2, R, errors per iterate).
    """
    w2 = w.detach().float()
    target, best, errors = w2, None, []
    for it in range(max(1, iters)):
        l1, l2 = first if it == 0 and first is not None else svd_factors(target, rank)
        qr = quantize(w2 - l1 @ l2)
        errors.append(float(error(l1, l2, qr)))
        if best is None or errors[-1] <= best[0]:
            best = (errors[-1], l1, l2)
        elif early_stop:
            break
        target = w2 - qr
    _, l1, l2 = best
    return l1, l2, w2 - l1 @ l2, errors
