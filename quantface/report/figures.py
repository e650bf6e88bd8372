"""Figures: quality vs bit setting per method and metric, and a qualitative comparison grid.

The curves are a pure function of metrics.csv; the grid reads the restored images the DAG wrote
(LQ | FP | each method at one bit setting | HQ) for the first few test images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from quantface.io import atomic_path, list_images, read_image
from quantface.report.aggregate import read_metrics
from quantface.report.tables import METRIC_LABELS, REFERENCE_ROWS, _bits_key


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def quality_vs_bits(df: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    sub = df[(df["dataset"] == dataset) & df["value"].notna()]
    quant = sub[~sub["method"].isin(REFERENCE_ROWS)]
    if quant.empty:
        return None
    metrics = list(dict.fromkeys(sub["metric"]))
    bits = sorted(quant["bits"].unique(), key=_bits_key)
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        m = sub[sub["metric"] == metric]
        for method, g in m[~m["method"].isin(REFERENCE_ROWS)].groupby("method"):
            g = g.set_index("bits").reindex(bits)
            ax.plot([b.upper() for b in bits], g["value"], marker="o", label=method)
        for ref, style in (("fp", "--"), ("input", ":")):
            v = m[m["method"] == ref]["value"]
            if not v.empty:
                ax.axhline(
                    v.iloc[0],
                    color="k",
                    ls=style,
                    lw=1,
                    label=ref.upper() if ref == "fp" else "input (LQ)",
                )
        hib = bool(m["higher_is_better"].iloc[0])
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)} {'↑' if hib else '↓'}")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, 0.0)
    )
    fig.suptitle(f"Quality vs bit setting on {dataset} (simulated quantization)")
    fig.tight_layout()
    path = out / f"quality_vs_bits_{dataset}.png"
    _save(fig, path)
    return path


def qualitative_grid(spec: dict[str, Any], out: Path) -> Path | None:
    """spec: {dataset, bits, n_images, columns: [[label, folder], ...]} (first column = LQ)."""
    columns = [(label, Path(folder)) for label, folder in spec.get("columns", [])]
    if not columns:
        return None
    names = [p.name for p in list_images(columns[0][1])][: int(spec.get("n_images", 4))]
    fig, axes = plt.subplots(
        len(names), len(columns), figsize=(1.6 * len(columns), 1.6 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        for c, (label, folder) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(read_image(folder / name))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
    fig.suptitle(
        f"{spec.get('dataset', '')}: methods at {spec.get('bits', '').upper()} "
        f"(simulated quantization)",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / f"qualitative_{spec.get('dataset', 'grid')}.png"
    _save(fig, path)
    return path


def write_figures(metrics: Path, out: Path, qualitative: dict[str, Any]) -> list[Path]:
    df = read_metrics([metrics])
    out.mkdir(parents=True, exist_ok=True)
    made = [quality_vs_bits(df, d, out) for d in sorted(df["dataset"].unique())]
    made.append(qualitative_grid(qualitative, out) if qualitative else None)
    return [p for p in made if p is not None]
