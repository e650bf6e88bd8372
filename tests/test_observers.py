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
