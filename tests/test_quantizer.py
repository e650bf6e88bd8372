import math

import pytest
import torch

from quantface.quant.quantizer import (
    QuantSpec,
    UniformQuantizer,
    fake_quant,
    qparams_from_range,
    quantize_tensor,
    reduce_range,
)


def test_asymmetric_grid_matches_hand_computation():
    spec = QuantSpec(bits=2)  # grid 0..3
    scale, zero = qparams_from_range(torch.tensor(-1.0), torch.tensor(2.0), spec)
    assert scale.item() == pytest.approx(1.0)  # (2 - (-1)) / 3
    assert zero.item() == 1.0  # round(1 / 1)
    x = torch.tensor([-1.4, -1.0, -0.4, 0.0, 0.6, 1.2, 2.0, 3.7])
    expected = torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    assert torch.equal(quantize_tensor(x, scale, zero, spec), expected)


def test_symmetric_grid_matches_hand_computation():
    spec = QuantSpec(bits=3, symmetric=True)  # grid -4..3, step = absmax / 3
    scale, zero = qparams_from_range(torch.tensor(-1.5), torch.tensor(0.9), spec)
    assert scale.item() == pytest.approx(0.5)
    assert zero.item() == 0.0
    x = torch.tensor([-2.3, -1.5, -0.26, 0.24, 0.9, 5.0])
    expected = torch.tensor([-2.0, -1.5, -0.5, 0.0, 1.0, 1.5])
    assert torch.allclose(quantize_tensor(x, scale, zero, spec), expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(1000, generator=g) * 3
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    scale, zero = qparams_from_range(x.min(), x.max(), spec)
    err = (quantize_tensor(x, scale, zero, spec) - x).abs()
    assert err.max().item() <= scale.item() / 2 + 1e-6


def test_eight_bits_near_lossless_two_bits_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g)

    def rel_err(bits):
        spec = QuantSpec(bits)
        s, z = qparams_from_range(x.min(), x.max(), spec)
        return ((quantize_tensor(x, s, z, spec) - x).norm() / x.norm()).item()

    assert rel_err(8) < 0.01
    assert rel_err(2) > 0.2


def test_per_channel_ranges_are_per_output_channel():
    w = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-10, 10, 9)])
    spec = QuantSpec(4, granularity="channel", channel_dim=0)
    lo, hi = reduce_range(w, spec)
    assert lo.shape == (2, 1) and torch.equal(hi.flatten(), torch.tensor([1.0, 10.0]))
    s, z = qparams_from_range(lo, hi, spec)
    q = quantize_tensor(w, s, z, spec)
    # each row is quantized on its own grid: the small row keeps its precision
    assert (q[0] - w[0]).abs().max() <= s[0].item() / 2 + 1e-6
    assert s[1].item() == pytest.approx(10 * s[0].item())


def test_group_and_token_granularity():
    x = torch.randn(3, 8)
    g = QuantSpec(4, granularity="group", group_size=4, channel_dim=-1)
    lo, hi = reduce_range(x, g)
    assert lo.shape == (3, 2, 1)
    s, z = qparams_from_range(lo, hi, g)
    assert quantize_tensor(x, s, z, g).shape == x.shape
    t = QuantSpec(4, granularity="token", channel_dim=-1, dynamic=True)
    q = UniformQuantizer(t)
    y = q(x)
    for row in range(3):  # each token uses its own min/max
        s_row = (max(x[row].max(), 0) - min(x[row].min(), 0)) / 15
        assert (y[row] - x[row]).abs().max() <= s_row / 2 + 1e-5


def test_straight_through_gradient():
    x = torch.tensor([-3.0, -0.3, 0.2, 0.6, 3.0], requires_grad=True)
    scale, zero = torch.tensor(0.25), torch.tensor(4.0)  # grid covers [-1, 0.75]
    fake_quant(x, scale, zero, 0, 7).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_degenerate_and_nan_ranges_give_finite_scales():
    spec = QuantSpec(4)
    s, z = qparams_from_range(torch.tensor(float("nan")), torch.tensor(float("inf")), spec)
    assert math.isfinite(s.item()) and s.item() > 0
    s, z = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), spec)  # constant channel
    assert s.item() > 0 and torch.isfinite(quantize_tensor(torch.zeros(3), s, z, spec)).all()


def test_quantizer_modes_and_state_dict_round_trip():
    q = UniformQuantizer(QuantSpec(4))
    with pytest.raises(RuntimeError):
        q(torch.ones(2))
    q.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    x = torch.linspace(-1, 1, 11)
    y = q(x)
    q.mode = "off"
    assert torch.equal(q(x), x)
    q2 = UniformQuantizer(QuantSpec(4))
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2(x), y)


@pytest.mark.parametrize("scale_shape", [(), (1, 6, 1, 1)])
def test_fake_quant_without_autograd_gives_the_same_bits_as_with_it(scale_shape):
    """The in-place inference path and the STE graph path compute identical values, ties and
    values far outside the grid included; with a gradient the graph path still runs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=g) * torch.logspace(-3, 3, 7)
    x.view(-1)[:40] = torch.arange(40) * 0.5 - 10  # exact halves: round-half-even ties
    scale = torch.rand(scale_shape, generator=g) * 0.1 + 1e-3
    zero = torch.round(torch.rand(scale_shape, generator=g) * 15)
    xg = x.clone().requires_grad_(True)
    graph = fake_quant(xg, scale, zero, 0, 15)
    with torch.no_grad():
        inplace = fake_quant(x, scale, zero, 0, 15)
    assert graph.requires_grad and not inplace.requires_grad
    assert torch.equal(graph.detach(), inplace)
    graph.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0  # STE: gradient inside the grid
    assert torch.equal(x, xg.detach())  # the input is never written in place


def test_fake_quant_without_autograd_skips_the_straight_through_graph(monkeypatch):
    """No gradient wanted: the in-place path runs, not round_ste's graph; with one it does."""
    from quantface.quant import quantizer

    calls = []
    monkeypatch.setattr(quantizer, "round_ste", lambda v: calls.append(v) or v.round())
    x, scale, zero = torch.randn(4, 8), torch.tensor(0.1), torch.tensor(3.0)
    with torch.no_grad():
        fake_quant(x, scale, zero, 0, 15)
    assert calls == []
    fake_quant(x.requires_grad_(True), scale, zero, 0, 15)
    assert len(calls) == 1
