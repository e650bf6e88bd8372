"""Score a folder of restored images and write long-format rows (`COLUMNS`).

Full-reference metrics pair each prediction with the HQ image of the same file stem; fidelity
metrics pair it with the FP model's output. A metric whose weight files are absent gets a row
with an empty value and the note "skipped (weights absent: <file>)".
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from quantface.data.datasets import load_manifest
from quantface.errors import DataError
from quantface.io import (
    atomic_path,
    check_square,
    image_size,
    list_images,
    read_image,
    to_tensor,
)
from quantface.memory import enter_stage
from quantface.metrics_format import COLUMNS, PER_IMAGE_COLUMNS
from quantface.quant.plan import BITS_RE
from quantface.registry import METRICS
from quantface.restore import fit_to_model
from quantface.timing import log_timing

log = logging.getLogger(__name__)


def bit_columns(bits: str) -> tuple[float, float]:
    """(w_bits, a_bits) for a bits label: wXaY -> X, Y; fp32 -> 32, 32; else NaN (input, mp)."""
    m = BITS_RE.match(bits)
    if m:
        return float(m.group(1)), float(m.group(2))
    if bits == "fp32":
        return 32.0, 32.0
    return math.nan, math.nan


def _load_stack(files: list[Path], size: int | None) -> torch.Tensor:
    imgs = [to_tensor(check_square(read_image(p), p)) for p in files]
    size = size or imgs[0].shape[-1]
    return torch.stack([fit_to_model(i, size) for i in imgs])


def resizing_note(files: list[Path], side: int, what: str) -> str:
    """'' when every image is side x side px, else what is resized to it (logged and noted)."""
    sizes = Counter(image_size(p) for p in files)
    off = {s: c for s, c in sizes.items() if s != (side, side)}
    if not off:
        return ""
    froms = ", ".join(f"{c} of {w}x{h}" for (w, h), c in sorted(off.items()))
    return f"{sum(off.values())} {what} images ({froms} px) resized to {side}x{side} px"


def _paired(pred_files: list[Path], folder: Path) -> list[Path]:
    by_stem = {p.stem: p for p in list_images(folder)}
    missing = [p.name for p in pred_files if p.stem not in by_stem]
    if missing:
        raise DataError(f"{folder} lacks the pair of {len(missing)} images, e.g. {missing[0]}")
    return [by_stem[p.stem] for p in pred_files]


def _check_against_manifest(pred_files: list[Path], pred: Path, manifest: Path) -> None:
    """Score the whole set or nothing: a restore that lost images must not shrink the average."""
    listed = {Path(f).stem for f in load_manifest(manifest.parent)["files"]}
    found = {p.stem for p in pred_files}
    if found != listed:
        raise DataError(
            f"{pred} has {len(found)} images, {manifest} lists {len(listed)} (missing "
            f"{sorted(listed - found)[:3]}, unexpected {sorted(found - listed)[:3]})"
        )


def evaluate_folder(
    pred: Path,
    ref: Path | None,
    fp: Path | None,
    metrics: list[str],
    out: Path,
    labels: dict[str, Any],
    weights_dir: Path,
    batch_size: int = 8,
    manifest: Path | None = None,
    device: str | torch.device = "cpu",
    per_image_out: Path | None = None,
) -> pd.DataFrame:
    """Score `pred` and write one row per metric to `out`, and every image's score to
    `per_image_out` (default: `<out stem>_per_image.csv` beside it), which the tables bootstrap
    (quantface/report/stats.py). Set-level metrics (FID) have no per-image rows."""
    per_image_out = per_image_out or out.with_name(f"{out.stem}_per_image.csv")
    pred_files = list_images(pred)
    if manifest is not None:
        _check_against_manifest(pred_files, pred, manifest)
    n = len(pred_files)
    w_bits, a_bits = bit_columns(str(labels.get("bits", "")))
    side = min(read_image(pred_files[0]).shape[:2])
    resized = {"pred": resizing_note(pred_files, side, "restored")}
    if resized["pred"]:
        log.info("evaluate: %s", resized["pred"])
    rows, per_image = [], []
    for name in metrics:
        enter_stage(f"metric {name}")
        metric = METRICS.get(name)
        base = {
            **labels,
            "w_bits": w_bits,
            "a_bits": a_bits,
            "metric": name,
            "higher_is_better": metric.higher_is_better,
            "n_images": n,
        }
        missing = metric.missing_weights(weights_dir)
        if missing:
            rows.append(
                {**base, "value": math.nan, "note": f"skipped (weights absent: {missing[0]})"}
            )
            log.warning("%s skipped: weights absent (%s under %s)", name, missing[0], weights_dir)
            continue
        metric.verify_weights(weights_dir)
        if side < metric.min_size:
            raise DataError(
                f"metric '{name}' needs images of at least {metric.min_size} px; "
                f"{pred_files[0]} is {side} px"
            )
        other = {"fr": ref, "fidelity": fp}.get(metric.mode)
        if metric.mode in ("fr", "fidelity") and other is None:
            raise DataError(f"metric '{name}' needs --{'ref' if metric.mode == 'fr' else 'fp'}")
        t0 = time.perf_counter()
        if getattr(metric, "set_level", False):  # FID: one value for the folder
            note = metric.build(weights_dir, device)
            value = metric.score_set(pred, other, weights_dir, batch_size)
            log.info("%s = %.4f over %d images (%.1f s)", name, value, n, time.perf_counter() - t0)
            rows.append({**base, "value": value, "note": note})
            continue
        other_files = _paired(pred_files, other) if other is not None else None
        if other_files is not None and metric.mode not in resized:
            resized[metric.mode] = resizing_note(other_files, side, f"{metric.mode} pair")
            if resized[metric.mode]:
                log.info("evaluate: %s", resized[metric.mode])
        note = "; ".join(
            n
            for n in (metric.build(weights_dir, device), resized["pred"], resized.get(metric.mode))
            if n
        )
        scores = []
        for s in range(0, n, batch_size):
            x = _load_stack(pred_files[s : s + batch_size], None)
            y = (
                _load_stack(other_files[s : s + batch_size], x.shape[-1])
                if other_files is not None
                else None
            )
            scores.append(metric.score(x.to(device), y.to(device) if y is not None else None))
        values = torch.cat(scores).double().cpu()
        value = values.mean().item()
        log.info("%s = %.4f over %d images (%.1f s)", name, value, n, time.perf_counter() - t0)
        log_timing(f"metric_{name}", n, time.perf_counter() - t0)
        rows.append({**base, "value": value, "note": note})
        keys = {k: base[k] for k in PER_IMAGE_COLUMNS[:5] if k in base}
        per_image += [
            {**keys, "image": f.name, "value": v} for f, v in zip(pred_files, values.tolist())
        ]
    df = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(per_image_out) as tmp:
        pd.DataFrame(per_image, columns=PER_IMAGE_COLUMNS).to_csv(tmp, index=False)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
