"""Range estimation for static quantizers: min-max, percentile and MSE (Lp) search.

An observer sees calibration tensors one batch at a time (`update`) and then proposes a clipping
range per quantization unit (`compute`). Which one a method uses is part of that method's paper:
MaxMin uses min-max, Q-Diffusion/EfficientDM an Lp-2.4 clip search (Q-Diffusion's SD recipe
then a running min-max average), others percentiles.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantface.quant.quantizer import QuantSpec, qparams_from_range, reduce_range


class MinMaxObserver:
    """Running min and max over everything seen (per tensor/channel/group as the spec says)."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.min: Tensor | None = None
        self.max: Tensor | None = None

    def update(self, x: Tensor) -> None:
        x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = reduce_range(x, self.spec)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)

    def compute(self) -> tuple[Tensor, Tensor]:
        if self.min is None or self.max is None:
            raise RuntimeError("observer saw no data")
        return self.min, self.max


class RunningMinMaxObserver(MinMaxObserver):
    """An exponential moving average of the per-batch min and max (Q-Diffusion's --running_stat).

    The first batch sets the range; each later one moves it by (1 - momentum) towards that
    batch's own extremes, as `act_momentum_update` in `qdiff/quant_layer.py` (momentum 0.95).
    Unlike the all-time min-max, one outlier batch moves the range by only 5 % of its excess.
    """

    def __init__(self, spec: QuantSpec, momentum: float = 0.95) -> None:
        super().__init__(spec)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def update(self, x: Tensor) -> None:
        x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = reduce_range(x, self.spec)
        if self.min is None or self.max is None:
            self.min, self.max = lo, hi
            return
        self.min = self.momentum * self.min + (1 - self.momentum) * lo
        self.max = self.momentum * self.max + (1 - self.momentum) * hi


class PercentileObserver:
    """Per-tensor clipping at the q-th / (100-q)-th percentile, averaged over batches."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, max_samples: int = 1 << 20):
        if spec.granularity != "tensor":
            raise ValueError("PercentileObserver supports per-tensor ranges only")
        self.spec, self.q, self.max_samples = spec, percentile / 100.0, max_samples
        self.lows: list[Tensor] = []
        self.highs: list[Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    def update(self, x: Tensor) -> None:
        flat = torch.nan_to_num(x.detach().float().flatten(), nan=0.0, posinf=0.0, neginf=0.0)
        if flat.numel() > self.max_samples:
            idx = torch.randint(flat.numel(), (self.max_samples,), generator=self._gen)
            flat = flat[idx.to(flat.device)]  # CPU draws: the same sample on any device
        self.lows.append(torch.quantile(flat, 1.0 - self.q))
        self.highs.append(torch.quantile(flat, self.q))

    def compute(self) -> tuple[Tensor, Tensor]:
        if not self.lows:
            raise RuntimeError("observer saw no data")
        return torch.stack(self.lows).mean(), torch.stack(self.highs).mean()


SEARCH_BLOCK = 1 << 16  # floats per block of channels in the per-channel MSE search


def even_indices(n: int, k: int, device: torch.device | str = "cpu") -> Tensor:
    """k evenly spaced indices into n elements, first and last included. The float32 linspace
    rounds its last index up to n once n exceeds 2^24 (an SD-2.1 activation at 512 px), one
    past the end: clamped there, so every smaller tensor keeps exactly the sample it had."""
    idx = torch.linspace(0, n - 1, k, device=device).long()
    return idx.clamp_(max=n - 1)


class MSEObserver(MinMaxObserver):
    """Shrink the min-max range by factors 1, 1-step, ... and keep the one with least Lp error.

    The LAPQ/Q-Diffusion search: error `mean|x - Q(x)|^p` with p=2.4, evaluated per quantization
    unit, so per-channel weights pick their own clip. Tensors are kept (subsampled) for the search.
    A per-tensor search evaluates its error on at most `max_rows * 64` values however many
    batches were observed: an even sample across all of them (the range to shrink is still the
    min-max of everything seen). The official code initialises each activation range on one
    calibration batch; this keeps every batch's values in the sample at one batch's cost.
    """

    def __init__(
        self,
        spec: QuantSpec,
        p: float = 2.4,
        steps: int = 80,
        step: float = 0.01,
        max_rows: int = 4096,
    ) -> None:
        super().__init__(spec)
        self.p, self.steps, self.step, self.max_rows = p, steps, step, max_rows
        self.samples: list[Tensor] = []

    def update(self, x: Tensor) -> None:
        super().update(x)
        x = x.detach().float()
        if self.spec.granularity == "tensor" and x.numel() > self.max_rows * 64:
            flat = x.flatten()
            x = flat[even_indices(flat.numel(), self.max_rows * 64, flat.device)]
        self.samples.append(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))

    def compute(self) -> tuple[Tensor, Tensor]:
        lo, hi = super().compute()
        if self.spec.granularity == "tensor":
            data = torch.cat([s.flatten() for s in self.samples])
            cap = self.max_rows * 64
            if data.numel() > cap:  # the error of every batch together, on one batch's budget
                data = data[even_indices(data.numel(), cap, data.device)]
        elif self.spec.granularity == "channel":
            data = torch.cat(self.samples, dim=self._cat_dim(self.samples[0].dim()))
        else:
            return lo, hi  # token/group ranges are dynamic or weight-only; min-max there
        if self.spec.granularity == "channel":
            dim = self.spec.channel_dim % data.dim()
            rows = data.movedim(dim, 0).reshape(data.shape[dim], -1)
            best_lo, best_hi = self._search_rows(rows, lo.reshape(-1, 1), hi.reshape(-1, 1))
        else:  # one range for the whole tensor: the same search over one row
            one = (1, 1)
            best_lo, best_hi = self._search_rows(
                data.reshape(1, -1), lo.reshape(one), hi.reshape(one)
            )
        return best_lo.reshape(lo.shape), best_hi.reshape(hi.shape)

    def _factors(self) -> list[float]:
        out = []
        for i in range(self.steps):
            f = 1.0 - i * self.step
            if f <= 0:
                break
            out.append(f)
        return out

    @torch.no_grad()
    def _search_rows(self, rows: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The Lp clip search for each row of `rows` (a channel, or the whole tensor as one row)
        against its range `lo`/`hi` ([rows, 1]): blocks of rows with every shrink factor applied
        to a block before the next, in place, so a block stays in cache across the factors
        instead of streaming the data through ~10 temporaries per factor (SD-2.1's 866M weights:
        minutes, not an hour; a per-tensor activation search: about half the time)."""
        best_lo, best_hi = lo.clone(), hi.clone()
        qmin, qmax = self.spec.qmin, self.spec.qmax
        block = max(1, SEARCH_BLOCK // max(1, rows.shape[1]))
        work = torch.empty(min(block, rows.shape[0]), rows.shape[1], device=rows.device)
        for c in range(0, rows.shape[0], block):
            x = rows[c : c + block]
            q = work[: x.shape[0]]
            best_err = None
            for f in self._factors():
                cand_lo, cand_hi = lo[c : c + block] * f, hi[c : c + block] * f
                scale, zero = qparams_from_range(cand_lo, cand_hi, self.spec)
                torch.div(x, scale, out=q)
                q.round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)
                err = q.sub_(x).abs_().pow_(self.p).mean(dim=1, keepdim=True)
                if best_err is None:
                    best_err = err
                    continue
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo[c : c + block] = torch.where(better, cand_lo, best_lo[c : c + block])
                best_hi[c : c + block] = torch.where(better, cand_hi, best_hi[c : c + block])
        return best_lo, best_hi

    def _cat_dim(self, ndim: int) -> int:
        # Concatenate batches along any dim that is not the channel dim.
        return 1 if self.spec.channel_dim % ndim == 0 else 0


OBSERVERS = {
    "minmax": MinMaxObserver,
    "running": RunningMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(kind: str, spec: QuantSpec, **kwargs) -> MinMaxObserver | PercentileObserver:
    if kind not in OBSERVERS:
        raise ValueError(f"unknown observer '{kind}'; known: {', '.join(OBSERVERS)}")
    return OBSERVERS[kind](spec, **kwargs)
