"""Calibration: run the FP model once on calibration images and cache what every method needs.

Collected once per model (`results/{model}/calib/activations.pt`) and shared by all methods and
bit settings, so no method re-runs the FP model just to see its activation ranges. Per quantization
site (Linear/Conv2d input, each attention matmul operand) we keep:

  min, max          per-tensor range over the whole calibration set
  ch_min, ch_max    per-input-channel range (SmoothQuant/PassionSR/QuantFace scaling statistics)
  rows              a seeded sample of activation rows (tokens / pixels x channels) for
                    percentile and MSE range searches and for distribution plots

plus the calibration LQ images themselves, so methods that reconstruct layer outputs or distil
from the FP model can replay the exact inputs.

Statistics are accumulated on the model's device and written from the CPU; `load` puts them on
the device the method computes on, next to the weights they are combined with. Row samples are
drawn with a CPU generator whatever the device, so the same rows are kept on a GPU as on a CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from quantface import __version__
from quantface.device import module_device, to_cpu
from quantface.errors import CheckpointError
from quantface.io import atomic_torch_save, file_sha256, load_tensors
from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import LayerQuant
from quantface.quant.target import QuantTarget
from quantface.quant.wrap import quantizers, unwrap_model, wrap_model
from quantface.timing import log_timing

log = logging.getLogger(__name__)
FORMAT = "quantface-calibration"
VERSION = 2  # bump when the stored statistics change meaning or layout (2: records its model)


class StatsObserver:
    """Accumulates range statistics and a row sample of one activation operand."""

    def __init__(self, channel_dim: int, sample_rows: int, seed: int) -> None:
        self.channel_dim = channel_dim
        self.sample_rows = sample_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.min = self.max = self.ch_min = self.ch_max = None
        self.rows: list[Tensor] = []

    def update(self, x: Tensor) -> None:
        # NaN/Inf count as 0, as in the range observers: one stray value must not turn every
        # range (and every scale derived from it downstream) into NaN.
        x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        rows = x.movedim(self.channel_dim % x.dim(), -1).reshape(-1, x.shape[self.channel_dim])
        lo, hi = rows.amin(0), rows.amax(0)
        if self.ch_min is None:
            self.ch_min, self.ch_max = lo, hi
        else:
            self.ch_min, self.ch_max = (
                torch.minimum(self.ch_min, lo),
                torch.maximum(self.ch_max, hi),
            )
        self.min, self.max = self.ch_min.min(), self.ch_max.max()
        take = min(self.sample_rows, rows.shape[0])
        idx = torch.randperm(rows.shape[0], generator=self.gen)[:take]
        self.rows.append(rows[idx.to(rows.device)].clone())

    def result(self) -> dict[str, Tensor]:
        rows = torch.cat(self.rows)
        if rows.shape[0] > self.sample_rows:
            idx = torch.randperm(rows.shape[0], generator=self.gen)[: self.sample_rows]
            rows = rows[idx.to(rows.device)]
        return {
            "min": self.min,
            "max": self.max,
            "ch_min": self.ch_min,
            "ch_max": self.ch_max,
            "rows": rows,
        }


@dataclass
class CalibrationSet:
    """Calibration images and per-site activation statistics of the FP model."""

    images: Tensor  # [N,3,H,W] in [0,1]
    stats: dict[str, dict[str, Tensor]]  # "<site>.input" / "<site>.a" / "<site>.b" -> stats
    meta: dict

    def input_stats(self, site: str, operand: str = "input") -> dict[str, Tensor]:
        return self.stats[f"{site}.{operand}"]

    def record_model(self, model_path: str | Path) -> None:
        """Tie these statistics to the model file they were collected from (its SHA-256)."""
        self.meta["model_sha256"] = file_sha256(model_path)

    def check_model(self, model_path: str | Path, calib_path: str | Path) -> None:
        """Refuse statistics of another model: ranges fitted to other weights are silently wrong."""
        if self.meta.get("model_sha256") != file_sha256(model_path):
            raise CheckpointError(
                f"{calib_path} was not made from {model_path} (the model file it records "
                "differs): calibrate this model first"
            )

    def save(self, path: str | Path) -> None:
        payload = {"format": FORMAT, "version": VERSION, "package_version": __version__}
        payload.update(images=self.images, stats=self.stats, meta=self.meta)
        atomic_torch_save(to_cpu(payload), path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CalibrationSet:
        path = Path(path)
        d = load_tensors(path, "calibration file", map_location=device)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a calibration file (no '{FORMAT}' header)")
        if d.get("version") != VERSION:
            raise CheckpointError(
                f"{path} was written by quantface {d.get('package_version', 'of an older release')}"
                f" (calibration format {d.get('version')}); quantface {__version__} reads format "
                f"{VERSION}: re-run `quantface calibrate`"
            )
        return cls(d["images"], d["stats"], d["meta"])


def _operand_names(kind: str) -> tuple[str, str]:
    return ("a", "b") if kind == "matmul" else ("input", "weight")


@torch.no_grad()
def collect_calibration(
    bundle: QuantTarget,
    images: Tensor,
    batch_size: int = 8,
    sample_rows: int = 512,
    seed: int = 0,
) -> CalibrationSet:
    """Run the FP bundle on `images` (moved batch by batch to its device), observing every site."""
    sites = bundle.quant_targets()
    spec = QuantSpec(8)
    layout = {name: LayerQuant(kind, spec, spec) for name, kind in sites.items()}
    wrap_model(bundle, layout)
    try:
        t0 = time.perf_counter()
        stats = observe_quantizer_inputs(bundle, images, sites, batch_size, sample_rows, seed)
        log.info(
            "calibration forward over %d images: %.1f s", len(images), time.perf_counter() - t0
        )
        log_timing("calibration_image", len(images), time.perf_counter() - t0)
    finally:
        unwrap_model(bundle)
    return CalibrationSet(images, stats, {"sites": sites, "sample_rows": sample_rows, "seed": seed})


@torch.no_grad()
def observe_quantizer_inputs(
    bundle: QuantTarget,
    images: Tensor,
    sites: dict[str, str],
    batch_size: int,
    sample_rows: int,
    seed: int,
) -> dict[str, dict[str, Tensor]]:
    """Statistics of what the activation quantizers of `sites` see over `images`, on a bundle
    already wrapped with them: the plain FP inputs, or the inputs after whatever transforms the
    wrapped layers apply (a balanced model's scaled and rotated activations)."""
    observers: dict[str, StatsObserver] = {}
    device = module_device(bundle)
    for i, (qname, q) in enumerate(sorted(quantizers(bundle).items())):
        site, _, qattr = qname.rpartition(".")
        if site not in sites:
            continue
        kind = sites[site]
        first, second = _operand_names(kind)
        is_first = qattr == "act_quantizer"
        if kind != "matmul" and not is_first:
            q.mode = "off"  # weights are not activations: nothing to observe
            continue
        operand = first if is_first else second
        channel_dim = 1 if kind == "conv2d" else -1
        obs = StatsObserver(channel_dim, sample_rows, seed * 100_003 + i)
        q.mode, q.observer = "observe", obs
        observers[f"{site}.{operand}"] = obs
    for start in tqdm(range(0, len(images), batch_size), desc="calibrate", disable=None):
        bundle.restore(images[start : start + batch_size].to(device))
    return {name: obs.result() for name, obs in observers.items()}
