"""Paper-style figures, each a pure function of files the DAG already wrote.

- quality vs bit setting, per metric and method (from metrics.csv);
- quality vs model size and vs BOPs with the Pareto front (metrics.csv + cost.csv): which
  (method, bits) cells give the best quality for their cost, the paper's efficiency argument;
- per-layer bit-width map of one or more plan.json files (mixed-precision plans; generic, so any
  method's plan can be drawn);
- activation distribution: per-channel max |x| of a few layers from the cached calibration
  statistics, before and (given a second statistics file, the workflow's `quantface calibrate
  --balanced`) after a balancing transform: the outlier channels that motivate QuantFace's
  rotation-scaling, and what is left of them;
- qualitative grid (LQ | FP | each method at one bit setting | HQ) with a zoomed crop per image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from quantface.io import atomic_path, list_images, read_image
from quantface.quant.plan import BitPlan
from quantface.registry import METHODS
from quantface.report.aggregate import read_metrics, read_per_image
from quantface.report.stats import mean_interval
from quantface.report.tables import REFERENCE_ROWS, _bits_key, metric_label, metric_unit

BITS_AXIS = "bit setting (weight / activation bits)"

# Zoom window of the qualitative grid, as fractions of (top, bottom, left, right): the eye and nose
# region of an FFHQ-aligned face, where restoration artefacts are easiest to see.
ZOOM_BOX = (0.30, 0.62, 0.22, 0.78)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _metric_title(metric: str, hib: bool) -> str:
    return f"{metric_label(metric)} {'↑' if hib else '↓'}"


def _metric_axis(metric: str) -> str:
    """A metric's axis label with its unit, or marked unitless, so no axis is a bare number."""
    return f"{metric_label(metric)} ({metric_unit(metric) or 'unitless'})"


def _legend_below(fig: plt.Figure, ax: plt.Axes) -> None:
    """The shared legend under the panels, inside the figure: constrained layout makes room for
    an "outside" legend, where a legend anchored below the axes would lie off the canvas."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)))


def _method_colors(methods: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(methods))}


def _error_bars(
    per_image: pd.DataFrame | None,
    dataset: str,
    metric: str,
    method: str,
    bits: list[str],
    values: pd.Series,
    seed: int,
) -> np.ndarray | None:
    """(2, len(bits)) distances from each mean to its 95% bootstrap bounds, or None."""
    if per_image is None or per_image.empty:
        return None
    sub = per_image[
        (per_image["dataset"] == dataset)
        & (per_image["metric"] == metric)
        & (per_image["method"] == method)
    ]
    bars = np.zeros((2, len(bits)))
    for i, b in enumerate(bits):
        v = sub[sub["bits"] == b]["value"].to_numpy(dtype=float)
        if len(v) > 1 and not math.isnan(values.iloc[i]):
            lo, hi = mean_interval(v, seed)
            bars[:, i] = values.iloc[i] - lo, hi - values.iloc[i]
    return bars


def quality_vs_bits(
    df: pd.DataFrame,
    dataset: str,
    out: Path,
    per_image: pd.DataFrame | None = None,
    seed: int = 0,
) -> Path | None:
    """Each metric against the bit setting, a line per method; with per-image scores each point
    carries its 95% bootstrap interval as an error bar."""
    sub = df[(df["dataset"] == dataset) & df["value"].notna()]
    quant = sub[~sub["method"].isin(REFERENCE_ROWS)]
    if quant.empty:
        return None
    metrics = list(dict.fromkeys(sub["metric"]))
    bits = sorted(quant["bits"].unique(), key=_bits_key)
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics):
        m = sub[sub["metric"] == metric]
        for method, g in m[~m["method"].isin(REFERENCE_ROWS)].groupby("method"):
            g = g.set_index("bits").reindex(bits)
            yerr = _error_bars(per_image, dataset, metric, method, bits, g["value"], seed)
            ax.errorbar(
                [b.upper() for b in bits],
                g["value"],
                yerr=yerr,
                marker="o",
                capsize=2,
                label=METHODS.label(method),
            )
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
        ax.set_title(_metric_title(metric, bool(m["higher_is_better"].iloc[0])))
        ax.set_xlabel(BITS_AXIS, fontsize=8)
        ax.set_ylabel(_metric_axis(metric), fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    _legend_below(fig, axes.flat[0])
    bars = ", 95% bootstrap intervals" if per_image is not None and not per_image.empty else ""
    fig.suptitle(f"Quality vs bit setting on {dataset} (simulated quantization{bars})")
    return _save(fig, out / f"quality_vs_bits_{dataset}.png")


def pareto_front(cost: np.ndarray, quality: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of the non-dominated points (no other point is cheaper *and* better), by cost.

    A point is on the front when its quality beats every cheaper point's; ties in cost keep the
    better one. Returned in increasing cost, which is the order the front is drawn in.
    """
    q = quality if higher_is_better else -quality
    order = np.lexsort((-q, cost))  # by cost, best quality first among equal costs
    front, best = [], -np.inf
    for i in order:
        if q[i] > best:
            front.append(int(i))
            best = q[i]
    return np.array(front, dtype=int)


def quality_vs_cost(df: pd.DataFrame, cost: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    """Each metric against model size (MiB) and against GBOPs, one point per (method, bits)."""
    sub = df[(df["dataset"] == dataset) & df["value"].notna() & (df["method"] != "input")]
    merged = sub.merge(
        cost[["model", "method", "bits", "size_bytes", "bops"]],
        on=["model", "method", "bits"],
        how="inner",
    )
    if merged[merged["method"] != "fp"].empty:
        return None
    merged["size_mib"] = merged["size_bytes"] / 2**20
    merged["gbops"] = merged["bops"] / 1e9
    metrics = list(dict.fromkeys(merged["metric"]))
    colors = _method_colors([m for m in merged["method"].unique() if m != "fp"])
    axes_x = (("size_mib", "model size (MiB)"), ("gbops", "GBOPs (10⁹ bit operations)"))
    per_row = 2  # metrics per row; each metric gets a size panel and a BOPs panel
    rows = math.ceil(len(metrics) / per_row)
    ncols = 2 * min(per_row, len(metrics))
    fig, axes = plt.subplots(
        rows, ncols, figsize=(3.3 * ncols, 3.0 * rows), squeeze=False, layout="constrained"
    )
    for k, metric in enumerate(metrics):
        m = merged[merged["metric"] == metric].reset_index(drop=True)
        hib = bool(m["higher_is_better"].iloc[0])
        for j, (xcol, xlabel) in enumerate(axes_x):
            ax = axes[k // per_row][2 * (k % per_row) + j]
            for method, g in m.groupby("method"):
                if method == "fp":
                    ax.scatter(g[xcol], g["value"], marker="*", s=120, color="k", label="FP")
                    continue
                ax.scatter(
                    g[xcol], g["value"], color=colors[method], label=METHODS.label(method), zorder=3
                )
                for _, r in g.iterrows():
                    ax.annotate(
                        r["bits"].upper(),
                        (r[xcol], r["value"]),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            front = pareto_front(m[xcol].to_numpy(float), m["value"].to_numpy(float), hib)
            ax.step(
                m[xcol].to_numpy()[front],
                m["value"].to_numpy()[front],
                where="post",
                color="0.4",
                lw=1,
                ls="--",
                label="Pareto front",
            )
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(x=0.15, y=0.12)  # room for the bits labels beside the outermost points
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(_metric_axis(metric), fontsize=8)
            ax.set_title(_metric_title(metric, hib), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[2 * len(metrics) :]:
        ax.axis("off")
    _legend_below(fig, axes.flat[0])
    fig.suptitle(f"Quality vs cost on {dataset} (simulated quantization; cost from cost.csv)")
    return _save(fig, out / f"quality_vs_cost_{dataset}.png")


def bit_width_map(plans: Mapping[str, BitPlan], out: Path, name: str = "bit_width_map") -> Path:
    """Per-layer weight and activation bits of each plan, layers in the first plan's order.

    Layers a plan lacks (kept FP) are drawn as 32 bits. Each row is labelled with its per-layer
    mean and, for an allocated plan, the element-weighted average its budget constrains.
    """
    if not plans:
        raise ValueError("bit_width_map needs at least one plan")
    layers = list(dict.fromkeys(n for p in plans.values() for n in p))
    labels = list(plans)
    w = np.array([[plans[p][n].w_bits if n in plans[p] else 32 for n in layers] for p in labels])
    a = np.array([[plans[p][n].a_bits if n in plans[p] else 32 for n in layers] for p in labels])
    levels = sorted(set(w.ravel()) | set(a.ravel()))
    cmap = plt.get_cmap("viridis", len(levels))
    index = {b: i for i, b in enumerate(levels)}
    width = min(24.0, 5.0 + 0.12 * len(layers))  # room for the row labels beside few layers
    fig, axes = plt.subplots(
        2,
        1,
        figsize=(width, 2.4 + 0.9 * len(labels) * 2),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for ax, grid, what in ((axes[0][0], w, "weight"), (axes[1][0], a, "activation")):
        im = ax.imshow(
            np.vectorize(index.get)(grid),
            cmap=cmap,
            vmin=-0.5,
            vmax=len(levels) - 0.5,
            aspect="auto",
            interpolation="nearest",
        )
        means = [_mean_label(lab, grid[i], plans[lab], what) for i, lab in enumerate(labels)]
        ax.set_yticks(range(len(labels)), means, fontsize=8)
        ax.set_title(f"{what} bits per layer", fontsize=9)
        ax.set_ylabel("plan", fontsize=8)
    axes[1][0].set_xticks(range(len(layers)), layers, rotation=90, fontsize=5)
    axes[1][0].set_xlabel("quantized layer (model order)", fontsize=8)
    cbar = fig.colorbar(im, ax=[ax[0] for ax in axes], ticks=range(len(levels)), pad=0.01)
    cbar.ax.set_yticklabels([str(b) for b in levels], fontsize=8)
    cbar.set_label("bits (32 = kept FP)", fontsize=8)
    return _save(fig, out / f"{name}.png")


def _mean_label(label: str, row: np.ndarray, plan: BitPlan, what: str) -> str:
    """The per-layer mean, and for an allocated plan the element-weighted average its budget
    constrains (the two differ: big layers weigh more in the budget than in a per-layer mean)."""
    quantized = row[row < 32]
    if not quantized.size:
        return label
    text = f"{label} (layer mean {quantized.mean():.2f}"
    if what == "activation" and "allocation" in plan.notes:
        weighted = json.loads(plan.notes["allocation"]).get("average_act_bits")
        if weighted is not None:
            text += f", element-weighted {weighted:.2f}"
    return text + ")"


def outlier_ratio(ch_absmax: np.ndarray) -> float:
    """max / median of per-channel max |x|: how far the worst channel stands out."""
    med = float(np.median(ch_absmax))
    return float(ch_absmax.max()) / med if med > 0 else math.inf


def _channel_absmax(stats: Mapping[str, Any]) -> np.ndarray:
    lo = np.asarray(stats["ch_min"], dtype=np.float64)
    hi = np.asarray(stats["ch_max"], dtype=np.float64)
    return np.maximum(np.abs(lo), np.abs(hi))


def pick_outlier_layers(stats: Mapping[str, Mapping[str, Any]], k: int = 4) -> list[str]:
    """The k linear/conv input sites whose activations have the largest outlier ratio."""
    sites = [s for s in stats if s.endswith(".input") and np.size(stats[s]["ch_max"]) > 1]
    ranked = sorted(sites, key=lambda s: (-outlier_ratio(_channel_absmax(stats[s])), s))
    return ranked[:k]


def activation_distribution(
    before: Mapping[str, Mapping[str, Any]],
    out: Path,
    layers: list[str] | None = None,
    after: Mapping[str, Mapping[str, Any]] | None = None,
    after_label: str = "after balancing",
) -> Path | None:
    """Per-channel max |x| of a few layers' inputs, before and (if given) after a transform.

    `before`/`after` are calibration statistics (CalibrationSet.stats: site -> {ch_min, ch_max,
    ...}); by default the four layers with the strongest outlier channels are shown.
    """
    layers = layers or pick_outlier_layers(before)
    if not layers:
        return None
    rows = 2 if after is not None else 1
    fig, axes = plt.subplots(
        rows,
        len(layers),
        figsize=(3.4 * len(layers), 2.9 * rows),
        squeeze=False,
        layout="constrained",
    )
    for j, site in enumerate(layers):
        for i, (label, stats) in enumerate((("before", before), (after_label, after))[:rows]):
            ax = axes[i][j]
            if stats is None or site not in stats:
                ax.axis("off")
                continue
            v = _channel_absmax(stats[site])
            ax.bar(np.arange(len(v)), v, width=1.0, color="C0" if i == 0 else "C2")
            ax.set_title(
                f"{_wrap(site.removesuffix('.input'))}\n{label}: max/median {outlier_ratio(v):.1f}",
                fontsize=7,
            )
            ax.set_xlabel("input channel (index)", fontsize=7)
            ax.tick_params(labelsize=6)
        for i in range(rows):
            axes[i][j].set_ylabel("max |x| (activation units)", fontsize=7)
    fig.suptitle("Per-channel activation magnitude (calibration statistics)", fontsize=9)
    return _save(fig, out / "activation_distribution.png")


def _wrap(name: str, width: int = 34) -> str:
    """A layer name broken over lines at its dots, whole: a cut name can leave two panels with
    the same title (every UNet block ends in "transformer_blocks.0.ff.net.2")."""
    lines = [""]
    for part in name.split("."):
        piece = part if not lines[-1] else "." + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def _zoom(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = img.shape[:2]
    t, b, left, r = ZOOM_BOX
    box = (int(t * h), int(b * h), int(left * w), int(r * w))
    return img[box[0] : box[1], box[2] : box[3]], box


def qualitative_grid(spec: dict[str, Any], out: Path) -> Path | None:
    """spec: {dataset, bits, n_images, columns: [[label, folder], ...]} (first column = LQ).

    Each image gets two rows: the full face with the zoom window outlined, then the zoomed crop.
    """
    columns = [(label, Path(folder)) for label, folder in spec.get("columns", [])]
    if not columns:
        return None
    names = [p.name for p in list_images(columns[0][1])][: int(spec.get("n_images", 4))]
    fig, axes = plt.subplots(
        2 * len(names),
        len(columns),
        figsize=(max(1.6 * len(columns), 3.6), 1.6 * len(names) * 1.6 + 0.4),
        squeeze=False,
        gridspec_kw={"height_ratios": [1.0, 0.6] * len(names)},
        layout="constrained",
    )
    for r, name in enumerate(names):
        for c, (label, folder) in enumerate(columns):
            img = read_image(folder / name)
            crop, (t, b, left, right) = _zoom(img)
            full, zoom = axes[2 * r][c], axes[2 * r + 1][c]
            full.imshow(img)
            full.add_patch(Rectangle((left, t), right - left, b - t, fill=False, ec="red", lw=0.8))
            zoom.imshow(crop)
            for ax in (full, zoom):
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                full.set_title(METHODS.label(label), fontsize=8)
    fig.suptitle(
        f"{spec.get('dataset', '')}: methods at {spec.get('bits', '').upper()} "
        f"(simulated quantization)",
        fontsize=9,
    )
    return _save(fig, out / f"qualitative_{spec.get('dataset', 'grid')}.png")


def write_figures(
    metrics: list[Path],
    out: Path,
    qualitative: dict[str, Any] | None = None,
    cost: list[Path] | None = None,
    calib: Path | None = None,
    calib_after: Path | None = None,
    plans: Mapping[str, Path] | None = None,
    per_image: list[Path] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Every figure the inputs allow; returns the paths written. The figures show the native
    protocol (a matched protocol's rows are in its own tables)."""
    from quantface.report.protocols import split_protocols

    df = split_protocols(read_metrics(list(metrics)))[0]
    scores = read_per_image(per_image) if per_image else None
    scores = split_protocols(scores)[0] if scores is not None else None
    out.mkdir(parents=True, exist_ok=True)
    datasets = sorted(df["dataset"].unique())
    made = [quality_vs_bits(df, d, out, scores, seed) for d in datasets]
    if cost:
        costs = pd.concat([pd.read_csv(p, dtype={"bits": str}) for p in cost], ignore_index=True)
        costs = costs.drop_duplicates(subset=["model", "method", "bits"], keep="last")
        made += [quality_vs_cost(df, costs, d, out) for d in datasets]
    if calib is not None:
        from quantface.quant.calibration import CalibrationSet

        before = _numpy_stats(CalibrationSet.load(calib).stats)
        after = _numpy_stats(CalibrationSet.load(calib_after).stats) if calib_after else None
        made.append(activation_distribution(before, out, after=after))
    if plans:
        made.append(bit_width_map({k: BitPlan.load(p) for k, p in plans.items()}, out))
    if qualitative:
        made.append(qualitative_grid(qualitative, out))
    return [p for p in made if p is not None]


def _numpy_stats(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    return {
        site: {k: s[k].numpy() for k in ("ch_min", "ch_max") if k in s} for site, s in stats.items()
    }
