"""QuantFace's options and their defaults, apart from the method so that the config check reads
them without importing torch (`quantface check-config`, the Snakefile's parse)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantface.errors import ConfigError
from quantface.methods.options import Options


@dataclass(frozen=True)
class QuantFaceOptions(Options):
    """QuantFace's options (config `method_options.quantface`; config/README.md: the long form).

    balancing: rotation-scaling parts (`both` = scale, then randomized Hadamard; ablations);
    alpha: migration strength of the channel scaling; rotate_attention: per-head Hadamard on
    Q/K/V; seed: Hadamard signs and LoRA init; branches: QD-LoRA branches (`none`: no
    branches, no distillation); rank: rank of each branch, capped by max_rank_fraction of
    min(C_out, C_in*k*k); weight_observer: initial weight range of the quantized residual;
    steps, lr, scale_lr, batch_size, loss: the QD-LoRA distillation (branches at lr, step sizes
    at scale_lr); crop, crops_per_image: its seeded crops; act_granularity: per-token dynamic or
    per-tensor static activations.
    """

    training_budget = ("steps",)  # the options that are its training budget

    balancing: Literal["both", "scale", "rht", "none"] = "both"
    alpha: float = 0.5
    rotate_attention: bool = True
    seed: int = 0
    branches: Literal["both", "svd", "lora", "none"] = "both"
    rank: int = 16
    max_rank_fraction: float = 0.05
    weight_observer: Literal["minmax", "percentile", "mse"] = "mse"
    steps: int = 80
    lr: float = 1.0e-3
    scale_lr: float = 1.0e-4
    batch_size: int = 4
    crop: int = 64
    crops_per_image: int = 2
    loss: Literal["l1", "l2"] = "l2"
    act_granularity: Literal["tensor", "token"] = "token"


@dataclass(frozen=True)
class QuantFaceMPOptions(QuantFaceOptions):
    """QuantFace-MP's options (config `method_options.quantface_mp`): QuantFace's, plus

    candidates: activation bit-widths the integer program chooses from; budget: average
    activation bits (None: the X of mpX); lam: weight of the quantization error against the
    perceptual one; perceptual: full-reference metric of the perceptual error; weights_dir:
    where its weights live; sensitivity_images, sensitivity_crop: the seeded crops each
    (layer, bits) sensitivity is measured on; sensitivity_sites: None measures every site, N
    only N evenly spaced ones (scale runs).
    """

    candidates: tuple[int, ...] = (3, 4, 5, 6)
    budget: float | None = None  # average activation bits; None: the X of mpX
    lam: float = 0.5
    perceptual: str = "ssim"
    weights_dir: str = "results/.weights"
    sensitivity_images: int = 2
    sensitivity_crop: int = 64
    sensitivity_sites: int | None = None  # measure every site; N: N evenly spaced ones


def check_perceptual(metric_name: str, weights_dir: Path):
    """The registered full-reference metric `perceptual` names, with its weights present.

    Called by the config check too, so a bad name fails before any job, not after calibration.
    """
    from quantface.registry import METRICS

    metric = METRICS.get(metric_name)
    if metric.mode == "nr":
        raise ConfigError(
            f"perceptual metric '{metric_name}' is no-reference; "
            "use a full-reference metric (e.g. ssim, lpips, dists)"
        )
    missing = metric.missing_weights(weights_dir)
    if missing:
        raise ConfigError(
            f"perceptual metric '{metric_name}' needs {weights_dir / missing[0]}; "
            "use ssim or provide the file"
        )
    return metric
