"""Hadamard transforms: power-of-two, composite (K x 2^m) and block-diagonal sizes.

Rotations by an orthonormal Hadamard matrix spread an outlier channel over all channels, which
is what QuaRot (and QuantFace's balancing) rely on. Every transform here acts on the *last* dim of
a batch (or any `dim`) and computes `x @ Hn` with `Hn` orthonormal. The matrices:

- n = 2^m: Sylvester's H_{2^m} (`fwht` is its butterfly);
- n = K * 2^m with a known Hadamard of order K (QuaRot's `get_hadK` idea): H_n = H_K (x) H_{2^m}.
  Instead of storing matrices, H_K is *constructed* by Paley's first construction for K = p + 1,
  p a prime with p = 3 (mod 4) (K = 4, 8, 12, 20, 24, 32, 44, 48, 60, ...); UNet widths
  320/640/1280 are 20 * 2^k, 960/1920 are 60 * 2^k;
- any other n (e.g. 3 RGB channels, 36): block-diagonal, I_{n/d} (x) H_d with d the largest
  Hadamard-able divisor of n (>= 4), else power-of-two blocks of n's binary expansion. Still
  exactly orthogonal, just less mixing.

How `hadamard_transform` runs on a CPU: BLAS matmuls beat butterflies (one memory pass per
level) by far, so a composite n is split as Hn = A (x) H_b with a, b near sqrt(n), and a row
seen as an a x b matrix X becomes A^T X H_b: a broadcast small matmul and one GEMM, n (a + b)
MACs per row. Where H_b would be small (`MIN_RIGHT`), one GEMM with the cached Hn is faster.
Factors and matrices are cached per (sizes, dtype, device).

The randomized Hadamard (QuIP#/QuaRot) is `diag(r) Hn` with seeded signs r in {-1, +1}^n.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import torch
from torch import Tensor


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _is_prime(p: int) -> bool:
    if p < 2:
        return False
    return all(p % d for d in range(2, math.isqrt(p) + 1))


def _has_paley(k: int) -> bool:
    """A Hadamard of order k is built here: powers of two, or Paley I with k - 1 prime = 3 mod 4."""
    return _is_pow2(k) or (k % 4 == 0 and _is_prime(k - 1) and (k - 1) % 4 == 3)


@functools.cache
def paley_hadamard(k: int) -> Tensor:
    """Unnormalised (+-1) Hadamard matrix of order k = p + 1, p prime = 3 (mod 4) (Paley I).

    With the quadratic character chi mod p and the Jacobsthal matrix Q[i, j] = chi(j - i)
    (antisymmetric because -1 is a non-residue), S = [[0, 1^T], [-1, Q]] satisfies S S^T = p I and
    S^T = -S, so H = I + S has H H^T = (p + 1) I.
    """
    p = k - 1
    if not (_is_prime(p) and p % 4 == 3):
        raise ValueError(f"Paley I needs k - 1 prime and = 3 mod 4, got k = {k}")
    residues = {(i * i) % p for i in range(1, p)}
    chi = torch.tensor([0] + [1 if a in residues else -1 for a in range(1, p)], dtype=torch.float64)
    idx = torch.arange(p)
    q = chi[(idx[None, :] - idx[:, None]) % p]
    s = torch.zeros(k, k, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = q
    return s + torch.eye(k, dtype=torch.float64)


@functools.cache
def sylvester_hadamard(n: int) -> Tensor:
    """Unnormalised Sylvester Hadamard H_n (n a power of two), symmetric."""
    if not _is_pow2(n):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h


def hadamard_factor(n: int) -> tuple[int, int] | None:
    """(K, 2^m) with n = K * 2^m and a constructible Hadamard of order K, or None.

    Prefers the smallest K (> 2^m butterfly share), like QuaRot's search over stored K's.
    """
    if n < 1:
        raise ValueError(f"size must be positive, got {n}")
    m = (n & -n).bit_length() - 1  # largest power of two dividing n
    odd = n >> m
    for extra in range(m + 1):
        k = odd << extra
        if _has_paley(k):
            return (1, n) if _is_pow2(k) else (k, n // k)
    return None


def fwht(x: Tensor) -> Tensor:
    """Unnormalised Walsh-Hadamard transform `x @ H_n` along the last dim (n a power of two)."""
    n = x.shape[-1]
    if not _is_pow2(n):
        raise ValueError(f"fwht needs a power-of-two size, got {n}")
    shape = x.shape
    h = 1
    y = x.reshape(-1, n)
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return y.reshape(shape)


def _blocks(n: int) -> list[int]:
    """Block sizes of the block-diagonal fallback (each block has a Hadamard)."""
    for d in range(n // 2, 3, -1):
        if n % d == 0 and hadamard_factor(d) is not None:
            return [d] * (n // d)
    return [1 << b for b in reversed(range(n.bit_length())) if n >> b & 1]


MIN_RIGHT = 16
"""Smallest H_b of the two-factor product, the measured crossover with the dense GEMM: with
b >= 16 the product beats one `x @ Hn` at every size measured (n >= 128, from 16 to 4096 rows);
with b = 8 the small matmul degenerates into batched matrix-vector products and is slower at
small n (48, 64, 96, 160) and no faster at 640 (`benchmarks/hadamard.py`)."""


def kron_split(n: int) -> tuple[int, int] | None:
    """(a, b) with Hn = A (x) H_b, A = H_K (x) H_{a/K} and (K, m) = `hadamard_factor(n)`, or None.

    Applying A (x) H_b costs n (a + b) MACs per vector against n^2 for the dense matrix, least at
    a = b = sqrt(n); b is the power of two nearest sqrt(n) (on a log scale) with b | m. None when
    n has no Kronecker form or b < `MIN_RIGHT` (n < 128, or a large K times a small 2^m).
    """
    f = hadamard_factor(n)
    if f is None:
        return None
    b = min(1 << round(math.log2(n) / 2), f[1])
    return (n // b, b) if b >= MIN_RIGHT else None


def _exact(make: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Cache `make(*sizes)` per (sizes, dtype, device), built outside inference mode so that a
    matrix first made during an inference-mode restore can still be saved by autograd later."""

    @functools.cache
    def cached(*key: int | torch.dtype | torch.device) -> Tensor:
        *sizes, dtype, device = key
        with torch.inference_mode(False):
            return make(*sizes).to(dtype=dtype, device=device)

    return cached


@_exact
def _dense(n: int) -> Tensor:
    return hadamard_matrix(n)


@_exact
def _left(n: int, b: int) -> Tensor:
    """A^T (unnormalised, +-1) of Hn = A (x) H_b: the factor applied over the first axis."""
    k, _ = hadamard_factor(n)
    hk = paley_hadamard(k) if k > 1 else torch.ones(1, 1, dtype=torch.float64)
    return torch.kron(hk, sylvester_hadamard(n // b // k)).T.contiguous()


@_exact
def _right(n: int, b: int) -> Tensor:
    """H_b / sqrt(n): the factor over the last axis, carrying the normalisation."""
    return sylvester_hadamard(b) / math.sqrt(n)


def kron_transform(x: Tensor, b: int) -> Tensor:
    """Orthonormal `x @ Hn` along the last dim as Hn = A (x) H_b (b a power of two dividing the
    2^m of `hadamard_factor(n)`, n / b a multiple of its K): the row as an a x b matrix X becomes
    A^T X H_b, a broadcast small matmul and one GEMM, which BLAS runs far faster than butterflies.
    """
    n = x.shape[-1]
    y = torch.matmul(_left(n, b, x.dtype, x.device), x.reshape(-1, n // b, b))
    return (y @ _right(n, b, x.dtype, x.device)).reshape(x.shape)


def hadamard_transform(x: Tensor, dim: int = -1) -> Tensor:
    """Orthonormal `x @ Hn` along `dim` (Hn = `hadamard_matrix(n)`), whichever way is fastest.

    The two-factor product when `kron_split(n)` has one; per block of the block-diagonal Hn when
    n has no Kronecker form and its blocks have a split; otherwise one matmul with the cached Hn.
    """
    dim = dim % x.dim()
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    split = kron_split(n)
    if split is not None:
        y = kron_transform(x, split[1])
    elif hadamard_factor(n) is None and kron_split(_blocks(n)[0]) is not None:
        y = torch.cat([hadamard_transform(s) for s in x.split(_blocks(n), dim=-1)], dim=-1)
    else:
        y = x @ _dense(n, x.dtype, x.device)
    return y.movedim(-1, dim)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The explicit orthonormal matrix `hadamard_transform` multiplies by (for tests and fusing)."""
    f = hadamard_factor(n)
    if f is not None:
        k, m = f
        h = (
            sylvester_hadamard(m)
            if k == 1
            else torch.kron(paley_hadamard(k), sylvester_hadamard(m))
        )
        return (h / math.sqrt(n)).to(dtype)
    mats = [hadamard_matrix(b, torch.float64) for b in _blocks(n)]
    return torch.block_diag(*mats).to(dtype)


def random_signs(n: int, seed: int) -> Tensor:
    """Seeded random +-1 vector: the diagonal of a randomized Hadamard."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def randomized_hadamard(x: Tensor, signs: Tensor, dim: int = -1) -> Tensor:
    """`x @ diag(signs) Hn` along `dim`: flip signs, then the orthonormal Hadamard."""
    shape = [1] * x.dim()
    shape[dim % x.dim()] = -1
    return hadamard_transform(x * signs.to(x.device, x.dtype).view(shape), dim)


def hadamard_ops(n: int) -> int:
    """Additions (and small-matrix MACs) per vector of one online transform of size n.

    The count of a deployed fast-Hadamard kernel (what the cost model charges), not of the CPU
    matmuls `hadamard_transform` simulates it with: n log2(2^m) butterfly adds plus n*K for the K x K factor (0 for a power of two); blocks sum.
    """
    f = hadamard_factor(n)
    if f is None:
        return sum(hadamard_ops(b) for b in _blocks(n))
    k, m = f
    return n * int(math.log2(m)) + (n * k if k > 1 else 0)


def layer_seed(seed: int, name: str) -> int:
    """A stable per-layer seed (the same layer gets the same signs in every run)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**31
