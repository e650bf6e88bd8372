"""QuantFace's options and their defaults, apart from the method so that the config check reads
them without importing torch (`quantface check-config`, the Snakefile's parse)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantface.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "balancing": "both",
    "alpha": 0.5,
    "rotate_attention": True,
    "seed": 0,
    "branches": "both",
    "rank": 16,
    "max_rank_fraction": 0.05,
    "weight_observer": "mse",
    "steps": 80,
    "lr": 1.0e-3,
    "scale_lr": 1.0e-4,
    "batch_size": 4,
    "crop": 64,
    "crops_per_image": 2,
    "loss": "l2",
    "act_granularity": "token",
}
MP_DEFAULTS: dict[str, Any] = {
    **DEFAULTS,
    "candidates": [3, 4, 5, 6],
    "budget": None,  # average activation bits; None: the X of mpX
    "lam": 0.5,
    "perceptual": "ssim",
    "weights_dir": "results/.weights",
    "sensitivity_images": 2,
    "sensitivity_crop": 64,
    "sensitivity_sites": None,  # measure every site; N: N evenly spaced ones (scale runs)
}


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
