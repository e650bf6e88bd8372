import torch

from quantface.quant.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    RunningMinMaxObserver,
)
from quantface.quant.quantizer import QuantSpec, qparams_from_range, quantize_tensor


def _lp_error(x, lo, hi, spec, p=2.4):
    s, z = qparams_from_range(lo, hi, spec)
    return (x - quantize_tensor(x, s, z, spec)).abs().pow(p).mean().item()


def test_minmax_tracks_extremes_across_batches():
    obs = MinMaxObserver(QuantSpec(8))
    obs.update(torch.tensor([0.5, -1.0]))
    obs.update(torch.tensor([3.0, 0.0]))
    lo, hi = obs.compute()
    assert (lo.item(), hi.item()) == (-1.0, 3.0)


def test_running_minmax_is_an_ema_of_batch_extremes():
    """Q-Diffusion's act_momentum_update: the first batch sets the range, later ones move it 5 %."""
    obs = RunningMinMaxObserver(QuantSpec(8))
    obs.update(torch.tensor([0.5, -1.0]))
    obs.update(torch.tensor([20.5, -1.0]))  # an outlier batch: 0.95 * 0.5 + 0.05 * 20.5
    lo, hi = obs.compute()
    assert torch.allclose(lo, torch.tensor(-1.0)) and torch.allclose(hi, torch.tensor(1.5))


def test_percentile_clips_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    x[0] = 1000.0
    obs = PercentileObserver(QuantSpec(8), percentile=99.9)
    obs.update(x)
    lo, hi = obs.compute()
    assert 2.5 < hi.item() < 4.0 and -4.0 < lo.item() < -2.5


def test_mse_search_beats_minmax_on_heavy_tails_per_channel():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((8, 512))  # heavy-tailed rows
    spec = QuantSpec(4, granularity="channel", channel_dim=0)
    mm, mse = MinMaxObserver(spec), MSEObserver(spec)
    mm.update(w)
    mse.update(w)
    lo_mm, hi_mm = mm.compute()
    lo, hi = mse.compute()
    assert lo.shape == (8, 1)
    assert (hi <= hi_mm).all() and (hi < hi_mm).any()  # clipping chosen per channel
    assert _lp_error(w, lo, hi, spec) < _lp_error(w, lo_mm, hi_mm, spec)


def _mse_search_streamed(obs: MSEObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """The search as `MSEObserver.compute` ran it before the blocked path: each shrink factor
    fake-quantizes the whole tensor (`quantize_tensor`, STE rounding) and reduces per channel."""
    lo, hi = MinMaxObserver.compute(obs)
    data = torch.cat(obs.samples, dim=obs._cat_dim(obs.samples[0].dim()))
    dims = [d for d in range(data.dim()) if d != obs.spec.channel_dim % data.dim()]
    best_err, best_lo, best_hi = None, lo, hi
    for i in range(obs.steps):
        f = 1.0 - i * obs.step
        if f <= 0:
            break
        scale, zero = qparams_from_range(lo * f, hi * f, obs.spec)
        err = (data - quantize_tensor(data, scale, zero, obs.spec)).abs().pow(obs.p)
        err = err.mean(dim=dims, keepdim=True)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo * f, best_lo)
        best_hi = torch.where(better, hi * f, best_hi)
    return best_lo, best_hi


def test_blocked_per_channel_mse_search_is_bitwise_the_streamed_one(monkeypatch):
    """Blocks of channels (smaller than the tensor, several blocks, a ragged last one) and every
    factor per block give exactly the ranges of the whole-tensor loop, for Linear and conv
    weights, symmetric and asymmetric, with the STE rounding's value equal to plain rounding."""
    from quantface.quant import observers

    monkeypatch.setattr(observers, "SEARCH_BLOCK", 1000)
    g = torch.Generator().manual_seed(0)
    for shape, spec in [
        ((96, 80), QuantSpec(4, True, "channel", channel_dim=0)),
        ((40, 12, 3, 3), QuantSpec(4, False, "channel", channel_dim=0)),
        ((33, 50), QuantSpec(8, False, "channel", channel_dim=0)),
        ((20, 7, 3, 3), QuantSpec(3, True, "channel", channel_dim=0)),
    ]:
        w = torch.randn(*shape, generator=g) * torch.rand(
            shape[0], *[1] * (len(shape) - 1), generator=g
        )
        w[0] = 0.0  # a dead channel: the range stays degenerate, as in the loop
        obs = MSEObserver(spec)
        obs.update(w)
        lo, hi = obs.compute()
        ref_lo, ref_hi = _mse_search_streamed(obs)
        assert lo.shape == ref_lo.shape == (shape[0], *[1] * (len(shape) - 1))
        assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi), shape


def test_even_indices_stay_in_bounds_past_float32_precision():
    """An SD-2.1 activation at 512 px holds 2^25 floats: the row sample must not index past it."""
    from quantface.quant.observers import even_indices

    n, k = 2**25, 4096 * 64
    idx = even_indices(n, k)
    assert idx[0] == 0 and idx[-1] == n - 1 and len(idx) == k
    assert bool((idx[1:] >= idx[:-1]).all())
    obs = MSEObserver(QuantSpec(4), max_rows=4096)
    obs.update(torch.zeros(n))  # raised IndexError with a float32 linspace
    assert obs.samples[0].numel() == k


def test_per_tensor_search_evaluates_one_batch_budget_across_all_batches(monkeypatch):
    """Four batches, each at the per-batch cap: the Lp error is evaluated on `max_rows * 64`
    values in all (not four times that), drawn from every batch, against the range of all."""
    obs = MSEObserver(QuantSpec(4), max_rows=4)
    seen = {}
    search = obs._search_rows

    def spy(rows, lo, hi):
        seen["rows"] = rows.clone()
        return search(rows, lo, hi)

    monkeypatch.setattr(obs, "_search_rows", spy)
    for b in range(4):
        obs.update(torch.full((256,), float(b)))
    obs.compute()
    rows = seen["rows"]
    assert rows.numel() == 4 * 64
    assert set(rows.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
