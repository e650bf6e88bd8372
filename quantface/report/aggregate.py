"""Merge per-job outputs into the two long tables everything else reads.

`results/metrics.csv` (columns: metrics_format.COLUMNS) is the single source of truth for tables and figures;
`results/metrics_per_image.csv` keeps every image's score behind those means (for the tables'
bootstrap intervals); `results/cost.csv` holds one row of totals per (model, method, bits). Merging is also how a user
combines shards from several runs or a cluster: rows are de-duplicated on their key, later files
winning, and sorted so the output does not depend on input order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from quantface.errors import DataError
from quantface.io import atomic_path
from quantface.metrics_format import COLUMNS, PER_IMAGE_COLUMNS

KEY = ["model", "method", "bits", "dataset", "metric"]
COST_COLUMNS = [
    "model",
    "method",
    "bits",
    "params",
    "quantized_weight_params",
    "param_bits",
    "fp32_param_bits",
    "size_bytes",
    "param_bits_reduction",
    "macs",
    "bops",
    "fp32_bops",
    "bops_reduction",
    "calibration_seconds",
    "quantizer",
    "budget",
]


def _write(df: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)


def _read_frames(paths: list[Path], columns: list[str], what: str, dtype: dict) -> list:
    """Each CSV's `columns`, or one DataError line naming the file and what is wrong."""
    frames = []
    for p in paths:
        try:
            df = pd.read_csv(p, keep_default_na=True, dtype=dtype)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"cannot read {what} {p}: {e}") from e
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{what} {p} lacks columns {missing}")
        frames.append(df[columns])
    return frames


def read_metrics(paths: list[Path]) -> pd.DataFrame:
    frames = _read_frames(paths, COLUMNS, "metrics file", {"bits": str, "note": str})
    if not frames:
        raise DataError("no metrics files given")
    df = pd.concat(frames, ignore_index=True)
    df["note"] = df["note"].fillna("")
    df = df.drop_duplicates(subset=KEY, keep="last")
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def aggregate_metrics(paths: list[Path], out: Path) -> pd.DataFrame:
    df = read_metrics(paths)
    _write(df, out)
    return df


def read_per_image(paths: list[Path]) -> pd.DataFrame:
    """Per-image scores of several files, de-duplicated on (KEY, image) like `read_metrics`."""
    dtype = {"bits": str, "image": str}
    frames = _read_frames(paths, PER_IMAGE_COLUMNS, "per-image scores", dtype)
    if not frames:
        return pd.DataFrame(columns=PER_IMAGE_COLUMNS)
    df = pd.concat(frames, ignore_index=True).drop_duplicates(subset=[*KEY, "image"], keep="last")
    return df.sort_values([*KEY, "image"], kind="stable").reset_index(drop=True)


def aggregate_per_image(paths: list[Path], out: Path) -> pd.DataFrame:
    df = read_per_image(paths)
    _write(df, out)
    return df


def aggregate_costs(paths: list[Path], out: Path) -> pd.DataFrame:
    rows = []
    for p in paths:
        try:
            cost = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read cost file {p}: {e}") from e
        rows.append(
            {
                "model": cost["model"],
                "method": cost["method"],
                "bits": cost["bits"],
                **cost["total"],
                "calibration_seconds": cost.get("calibration_seconds", 0.0),
                "quantizer": cost.get("quantizer", "not recorded"),
                "budget": cost.get("budget", "not recorded"),
            }
        )
    df = pd.DataFrame(rows, columns=COST_COLUMNS)
    df = df.drop_duplicates(subset=["model", "method", "bits"], keep="last")
    df = df.sort_values(["model", "method", "bits"], kind="stable").reset_index(drop=True)
    _write(df, out)
    return df


EXPORT_COLUMNS = [
    "model",
    "method",
    "bits",
    "disk_bytes",
    "cost_model_bytes",
    "disk_over_cost_model",
    "fp32_bytes",
    "bit_identical",
]


def aggregate_exports(paths: list[Path], out: Path) -> pd.DataFrame:
    """One row per packed export (`quantface export` size.json): bytes on disk vs cost model."""
    rows = []
    for p in paths:
        try:
            rows.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read export report {p}: {e}") from e
    df = pd.DataFrame(rows).reindex(columns=EXPORT_COLUMNS)
    df = df.drop_duplicates(subset=["model", "method", "bits"], keep="last")
    df = df.sort_values(["model", "method", "bits"], kind="stable").reset_index(drop=True)
    _write(df, out)
    return df
