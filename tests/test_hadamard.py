"""Fast Walsh-Hadamard transforms against explicit matrices, and rotation invariance of a layer."""

import math

import pytest
import torch
import torch.nn.functional as F

from quantface.quant.hadamard import (
    fwht,
    hadamard_factor,
    hadamard_matrix,
    hadamard_ops,
    hadamard_transform,
    kron_split,
    kron_transform,
    paley_hadamard,
    random_signs,
    randomized_hadamard,
)

SIZES = [1, 2, 3, 4, 8, 12, 20, 24, 36, 40, 44, 48, 60, 64, 96, 320, 640, 1280, 7]


def _naive_hadamard(n: int) -> torch.Tensor:
    """Sylvester's H_n by its closed form H[i, j] = (-1)^popcount(i & j) (independent of fwht)."""
    i = torch.arange(n)
    bits = (i[:, None] & i[None, :]).tolist()
    return torch.tensor([[(-1) ** b.bit_count() for b in row] for row in bits]).double()


def test_fwht_matches_the_closed_form_sylvester_matrix():
    for n in (1, 2, 8, 64):
        x = torch.randn(3, 5, n, dtype=torch.float64)
        assert torch.allclose(fwht(x), x @ _naive_hadamard(n), atol=1e-12)
    with pytest.raises(ValueError):
        fwht(torch.zeros(6))


@pytest.mark.parametrize("k", [4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, 80, 84, 104, 108])
def test_paley_matrices_are_hadamard(k):
    h = paley_hadamard(k)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h @ h.T, k * torch.eye(k, dtype=h.dtype))


def test_paley_rejects_orders_without_a_prime():
    with pytest.raises(ValueError):
        paley_hadamard(36)  # 35 is not prime


@pytest.mark.parametrize("n", SIZES)
def test_transform_equals_explicit_orthonormal_matrix(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-12)
    x = torch.randn(4, 2, n, dtype=torch.float64)
    assert torch.allclose(hadamard_transform(x), x @ h, atol=1e-12)
    # along another dim (the channel dim of a conv activation)
    xc = torch.randn(2, n, 3, 3, dtype=torch.float64)
    ref = (xc.movedim(1, -1) @ h).movedim(-1, 1)
    assert torch.allclose(hadamard_transform(xc, dim=1), ref, atol=1e-12)


def test_unet_widths_use_a_full_composite_hadamard():
    for n, k in [(320, 20), (640, 20), (1280, 20), (960, 60), (48, 12), (1024, 1)]:
        assert hadamard_factor(n) == (k, n // k)
        h = hadamard_matrix(n)
        # a full Hadamard: every entry has magnitude 1/sqrt(n) (no block-diagonal zeros)
        assert torch.allclose(h.abs(), torch.full_like(h, 1 / math.sqrt(n)))
    assert hadamard_factor(3) is None and hadamard_factor(36) is None  # block-diagonal fallback


def test_hadamard_spreads_an_outlier_and_preserves_norms():
    x = torch.zeros(320, dtype=torch.float64)
    x[17] = 100.0
    y = hadamard_transform(x)
    assert torch.allclose(y.norm(), x.norm())
    assert y.abs().max() < 100.0 / math.sqrt(320) + 1e-9


def test_randomized_hadamard_is_seeded_and_orthogonal():
    s1, s2 = random_signs(20, 3), random_signs(20, 3)
    assert torch.equal(s1, s2) and not torch.equal(s1, random_signs(20, 4))
    assert set(s1.tolist()) <= {-1.0, 1.0}
    eye = torch.eye(20, dtype=torch.float64)
    q = randomized_hadamard(eye, s1)
    assert torch.allclose(q @ q.T, eye, atol=1e-12)
    assert torch.allclose(q, torch.diag(s1.double()) @ hadamard_matrix(20), atol=1e-12)


@pytest.mark.parametrize("n", [20, 3, 64])
def test_rotating_weights_and_activations_leaves_layers_unchanged(n):
    torch.manual_seed(0)
    signs = random_signs(n, 1).double()
    x = torch.randn(5, n, dtype=torch.float64)
    w = torch.randn(7, n, dtype=torch.float64)
    rx, rw = randomized_hadamard(x, signs), randomized_hadamard(w, signs, dim=1)
    assert torch.allclose(F.linear(rx, rw), F.linear(x, w), atol=1e-10)
    xc = torch.randn(2, n, 6, 6, dtype=torch.float64)
    wc = torch.randn(5, n, 3, 3, dtype=torch.float64)
    out = F.conv2d(randomized_hadamard(xc, signs, 1), randomized_hadamard(wc, signs, 1), padding=1)
    assert torch.allclose(out, F.conv2d(xc, wc, padding=1), atol=1e-10)


def test_hadamard_op_count():
    assert hadamard_ops(64) == 64 * 6
    assert hadamard_ops(320) == 320 * 4 + 320 * 20  # butterfly on 16, 20x20 matmul
    assert hadamard_ops(3) == hadamard_ops(2) + hadamard_ops(1) == 2


MODEL_WIDTHS = [320, 640, 960, 1280, 2560, 5120]
TINY_WIDTHS = [3, 4, 8, 16, 32, 36, 64, 96, 128, 192, 256, 384, 448, 512, 1024]


@pytest.mark.parametrize("n", MODEL_WIDTHS + TINY_WIDTHS)
def test_fast_paths_equal_the_dense_matrix_in_float32(n):
    """Whichever path runs (dense, two-factor, blocks), it is `x @ hadamard_matrix(n)`."""
    x = torch.randn(6, n)
    y = hadamard_transform(x)
    assert y.dtype == torch.float32
    ref = (x.double() @ hadamard_matrix(n)).float()
    assert torch.allclose(y, ref, atol=2e-6, rtol=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)  # orthogonal on any x


@pytest.mark.parametrize("n", [320, 960, 1280])
def test_two_factor_path_is_orthogonal_and_exact_in_float64(n):
    assert kron_split(n) is not None
    eye = torch.eye(n, dtype=torch.float64)
    q = hadamard_transform(eye)
    assert q.dtype == torch.float64
    assert torch.allclose(q @ q.T, eye, atol=1e-12)
    assert torch.allclose(q, hadamard_matrix(n), atol=1e-14)  # normalisation, order and signs


@pytest.mark.parametrize("n, b", [(320, 8), (1280, 64), (96, 8), (48, 4), (1024, 1024), (60, 1)])
def test_kron_transform_is_hn_for_any_split(n, b):
    """Any A (x) H_b with b | 2^m is the same Hn (the benchmark times splits the rule rejects)."""
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(kron_transform(x, b), x @ hadamard_matrix(n), atol=1e-12)


def test_kron_split_is_balanced_and_keeps_the_small_factor():
    assert [kron_split(n) for n in MODEL_WIDTHS] == [
        (20, 16),
        (20, 32),
        (60, 16),
        (40, 32),
        (40, 64),
        (80, 64),
    ]
    assert kron_split(448) is None  # 224 x 2: a matrix-vector product, the dense GEMM is faster
    assert kron_split(36) is None  # no Kronecker form (block-diagonal)


def test_cached_matrices_survive_inference_mode_for_autograd():
    """The first call may come from an inference-mode restore; a later training step still needs
    a matrix autograd can save for backward."""
    with torch.inference_mode():
        hadamard_transform(torch.randn(2, 768))  # 24 x 32, a size no other test builds
    x = torch.randn(2, 768, requires_grad=True)
    hadamard_transform(x).square().sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-5)  # H orthogonal: d|xH|^2/dx = 2x
