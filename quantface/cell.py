"""Restore and score every test set of one model in one process: the workflow's per-model job.

Why: the workflow used to run one process per (model, test set) for restoring and another for
scoring, and each paid Python, torch, diffusers and pyiqa start-up (10-20 s on 2 cores) for 1-5 s
of work. One job per model keeps the model and the built metrics in memory across test sets;
each set still gets its own `images/` folder (via `restore_folder`, with its `restore.json`
record) and its own `metrics.csv` (via `evaluate_folder`), written atomically as before, so the
report, the resumability of finished jobs and a per-model SLURM job are unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantface.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSet:
    """One test set of a model's job: where its inputs are and where its outputs go."""

    dataset: str
    lq: Path
    manifest: Path
    metrics_out: Path
    metrics: list[str] = field(default_factory=list)
    images: Path | None = None  # restored images; None: score `lq` itself (the input row)
    hq: Path | None = None  # paired sets: the references of full-reference metrics
    fp: Path | None = None  # the FP model's restorations: the references of fidelity metrics

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestSet:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown or not {"dataset", "lq", "manifest", "metrics_out"} <= set(d):
            raise ConfigError(
                f"--sets: each entry needs dataset, lq, manifest, metrics_out "
                f"(optional: images, hq, fp, metrics); got {sorted(d)}"
            )
        paths = {"lq", "manifest", "metrics_out", "images", "hq", "fp"}
        return cls(**{k: Path(v) if k in paths and v else v for k, v in d.items()})


def parse_sets(text: str) -> list[TestSet]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--sets is not JSON: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("--sets must be a non-empty JSON list of test sets")
    return [TestSet.from_dict(e) for e in entries]


def restore_and_evaluate(
    model: Path | None,
    sets: list[TestSet],
    labels: dict[str, Any],
    weights_dir: Path,
    restore_batch: int = 8,
    metric_batch: int = 8,
    device: str = "cpu",
) -> None:
    """Restore each set with `model` (None: score the inputs) and score it, one set at a time."""
    from quantface.evaluate import evaluate_folder
    from quantface.memory import enter_stage
    from quantface.models.checkpoint import load_bundle
    from quantface.restore import restore_folder

    loaded = load_bundle(model, device=device) if model is not None else None
    for s in sets:
        pred = s.lq
        if loaded is not None:
            if s.images is None:
                raise ConfigError(f"--sets: {s.dataset} has no 'images' folder to restore into")
            enter_stage(f"restore {s.dataset}")
            restore_folder(model, s.lq, s.images, restore_batch, device=device, loaded=loaded)
            pred = s.images
        enter_stage(f"evaluate {s.dataset}")
        evaluate_folder(
            pred=pred,
            ref=s.hq,
            fp=s.fp,
            metrics=s.metrics,
            out=s.metrics_out,
            labels={**labels, "dataset": s.dataset},
            weights_dir=weights_dir,
            batch_size=metric_batch,
            manifest=s.manifest,
            device=device,
        )
