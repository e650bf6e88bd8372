"""Paper-style tables (Markdown, its HTML rendering, LaTeX booktabs, CSV) from metrics.csv.

Layout follows QuantFace's Tables 1 and 3: the degraded input and the FP model on top, then one
block per bit setting (W8A8, W6A6, W4A6, W4A4, mixed precision) with a row per method; columns
are metrics with an arrow saying which direction is better. Within each bit block the best value
of each column is bold and the second best underlined; with per-image scores every cell carries
its 95% bootstrap interval and a lead that is within noise is marked as a tie instead. Every table ends with footnotes stating
model, data, seed, bit conventions and that quantization is simulated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from quantface.io import atomic_write_text
from quantface.registry import METHODS, METRICS
from quantface.report.aggregate import read_metrics, read_per_image
from quantface.report.html import write_markdown_table
from quantface.report.stats import N_BOOT, lead_is_significant, mean_interval

REFERENCE_ROWS = ("input", "fp")
MISSING = "—"  # a cell with no value (metric not run for that row)
BIT_ORDER = ("fp32", "w8a8", "w6a6", "w4a8", "w4a6", "w4a4")
# Column order of the metrics (the paper's: fidelity to HQ, then no-reference, then learned);
# a metric not named here follows, by name. Labels, units and decimals are each metric's own.
METRIC_ORDER = (
    "psnr", "ssim", "ms_ssim", "fsim", "gmsd", "vif", "niqe", "piqe", "psnr_fp", "lpips", "dists",
    "musiq", "maniqa", "clipiqa",
)  # fmt: skip
# cost.csv column -> (table column, scale, higher is better, decimals); rendered like a metric
COST_COLUMNS = {
    "params": ("Params (M)", 1e-6, False, 3),
    "size_bytes": ("Size (KiB)", 1 / 1024, False, 1),
    "param_bits_reduction": ("Param-bit reduction (%)", 100.0, True, 2),
    "macs": ("GMACs", 1e-9, False, 3),
    "bops": ("GBOPs", 1e-9, False, 2),
    "bops_reduction": ("BOP reduction (%)", 100.0, True, 2),
    "calibration_seconds": ("Calibration (s)", 1.0, False, 1),
}


def _cost_column(metric: str) -> tuple | None:
    return COST_COLUMNS.get(metric.removeprefix("cost:")) if metric.startswith("cost:") else None


def metric_label(metric: str) -> str:
    """A column's name in tables and figures: the metric's own `label` (read from its source,
    so the report imports no metric code), a cost column's, or the raw name."""
    if (cost := _cost_column(metric)) is not None:
        return cost[0]
    return METRICS.label(metric) if metric in METRICS else metric


def metric_decimals(metric: str) -> int:
    if (cost := _cost_column(metric)) is not None:
        return cost[3]
    return int(METRICS.attr(metric, "decimals", 4)) if metric in METRICS else 4


def metric_unit(metric: str) -> str:
    """The metric's unit ("" for a unitless score or an unknown name)."""
    if _cost_column(metric) is not None or metric not in METRICS:
        return ""
    return str(METRICS.attr(metric, "unit", ""))


FULL_REFERENCE = {"psnr", "ssim", "ms_ssim", "fsim", "gmsd", "vif", "lpips", "dists", "deg", "lmd"}
CONVENTIONS = (
    (
        "Quantization is simulated (fake-quant in FP32): uniform integer grids; attention QK^T "
        "and AV quantized at the activation bit-width; the visual prompt embedder stays FP."
    ),
    (
        "input = the degraded LQ image itself; PSNR-FP = PSNR of a quantized model's output "
        "against the FP model's output (the damage done by quantization alone)."
    ),
)


def _bits_key(bits: str) -> tuple[int, str]:
    if bits in BIT_ORDER:
        return BIT_ORDER.index(bits), bits
    m = re.match(r"w(\d+)a(\d+)$", bits)
    if m:  # unknown uniform settings: more bits first
        return len(BIT_ORDER), f"{100 - int(m.group(1)):03d}{100 - int(m.group(2)):03d}"
    return len(BIT_ORDER) + 1, bits


def _fmt(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{metric_decimals(metric)}f}"


def _per_image_series(per_image: pd.DataFrame | None, datasets: list[str]) -> dict:
    """(bits, method, dataset, metric) -> per-image scores indexed by image name."""
    if per_image is None or per_image.empty:
        return {}
    sub = per_image[per_image["dataset"].isin(datasets)]
    return {
        key: g.set_index("image")["value"].astype(float)
        for key, g in sub.groupby(["bits", "method", "dataset", "metric"], sort=False)
    }


def _significant(best: list, second: list, scores: dict, hib: bool, seed: int) -> bool:
    """Every best cell leads every runner-up outside the paired 95% interval (same images)."""
    for b in best:
        for r in second:
            a, c = scores.get(b), scores.get(r)
            if a is None or c is None:
                return False
            common = a.index.intersection(c.index)
            if len(common) < 2 or not lead_is_significant(
                a[common].to_numpy(), c[common].to_numpy(), hib, seed
            ):
                return False
    return True


def build_table(
    df: pd.DataFrame,
    datasets: list[str],
    per_image: pd.DataFrame | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Wide table: index (bits, method), one column per (dataset, metric); plus ranking marks.

    With per-image scores every cell gets its 95% bootstrap interval (`marks["ci"]`), and the
    best of a bit block is marked as a tie (`marks["tie"]`) unless its paired lead over the
    runner-up is significant (quantface/report/stats.py)."""
    sub = df[df["dataset"].isin(datasets)]
    if sub.empty:
        return pd.DataFrame(), {}
    order = [*METRIC_ORDER, *(f"cost:{k}" for k in COST_COLUMNS)]
    metric_order = sorted(
        set(sub["metric"]), key=lambda m: (order.index(m), m) if m in order else (len(order), m)
    )
    hib = dict(zip(sub["metric"], sub["higher_is_better"].astype(bool)))
    wide = sub.set_index(["bits", "method", "dataset", "metric"])["value"].unstack(
        ["dataset", "metric"]
    )
    cols = [(d, m) for d in datasets for m in metric_order if (d, m) in wide.columns]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols))

    def row_key(idx: tuple[str, str]) -> tuple:
        bits, method = idx
        if method in REFERENCE_ROWS:
            return (-1, REFERENCE_ROWS.index(method), "")
        return (*_bits_key(bits), method)

    wide = wide.loc[sorted(wide.index, key=row_key)]
    skipped = sub[sub["note"].str.startswith("skipped", na=False)]
    scores = _per_image_series(per_image, datasets)
    marks: dict = {
        "hib": hib,
        "rank": {},
        "tie": set(),
        "ci": {
            ((k[0], k[1]), (k[2], k[3])): mean_interval(v.to_numpy(), seed)
            for k, v in scores.items()
            if len(v) > 1
        },
        "skipped": dict(
            zip(
                zip(skipped["bits"], skipped["method"], skipped["dataset"], skipped["metric"]),
                skipped["note"],
            )
        ),
    }
    for bits, block in wide.groupby(level="bits", sort=False):
        block = block[[m not in REFERENCE_ROWS for m in block.index.get_level_values("method")]]
        if len(block) < 2:
            continue
        for col in wide.columns:
            # rank on the printed value, so two cells that read the same get the same mark
            shown = {idx: _fmt(v, col[1]) for idx, v in block[col].dropna().items()}
            levels = sorted({float(t) for t in shown.values()}, reverse=hib[col[1]])
            for idx, text in shown.items():
                rank = levels.index(float(text)) + 1
                if rank <= 2:
                    marks["rank"][(idx, col)] = rank
            if scores and len(levels) > 1:
                by_rank = {
                    r: [(*idx, *col) for idx, t in shown.items() if float(t) == levels[r - 1]]
                    for r in (1, 2)
                }
                if not _significant(by_rank[1], by_rank[2], scores, hib[col[1]], seed):
                    marks["tie"] |= {((k[0], k[1]), col) for k in by_rank[1] + by_rank[2]}
    return wide, marks


def _header(col: tuple[str, str], marks: dict, multi: bool) -> str:
    d, m = col
    arrow = "↑" if marks["hib"][m] else "↓"
    label = f"{metric_label(m)}{arrow}"
    return f"{d}: {label}" if multi else label


def _cell(wide: pd.DataFrame, idx, col, marks: dict, style: str) -> str:
    key = (idx[0], idx[1], col[0], col[1])
    if key in marks["skipped"]:
        return "skipped"
    text = _fmt(wide.loc[idx, col], col[1])
    if text != MISSING and (idx, col) in marks.get("ci", {}):
        lo, hi = marks["ci"][(idx, col)]
        text = f"{text} ±{_fmt((hi - lo) / 2, col[1])}"
    if (idx, col) in marks.get("tie", ()):
        return f"{text} ≈"  # (LaTeX: escaped by to_latex like any plain cell)
    rank = marks["rank"].get((idx, col))
    if rank == 1:
        return f"**{text}**" if style == "md" else rf"\textbf{{{_tex_escape(text)}}}"
    if rank == 2:
        return f"<u>{text}</u>" if style == "md" else rf"\underline{{{_tex_escape(text)}}}"
    return text


def _row_label(idx) -> tuple[str, str]:
    bits, method = idx
    if method == "input":
        return MISSING, "Input (LQ)"
    if method == "fp":
        return "W32A32", "FP"
    return bits.upper(), METHODS.label(method)


def to_markdown(wide: pd.DataFrame, marks: dict, title: str, notes: list[str]) -> str:
    multi = len({c[0] for c in wide.columns}) > 1
    head = ["Bits", "Method"] + [_header(c, marks, multi) for c in wide.columns]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(wide.columns)) + "|",
    ]
    for idx in wide.index:
        cells = [_cell(wide, idx, c, marks, "md") for c in wide.columns]
        lines.append("| " + " | ".join([*_row_label(idx), *cells]) + " |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "±": r"$\pm$",
    "≈": r"$\approx$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "—": "---",
    "–": "--",
    "−": "$-$",  # the minus sign of "native − matched"
    "·": r"$\cdot$",
}


def _tex_escape(s: str) -> str:
    """Text as LaTeX typesets it literally: every special character escaped, one at a time."""
    return "".join(TEX_ESCAPES.get(c, c) for c in s)


def to_latex(wide: pd.DataFrame, marks: dict, title: str, notes: list[str]) -> str:
    caption = re.sub(r"^Table \d+: ", "", title)  # LaTeX numbers the table itself
    multi = len({c[0] for c in wide.columns}) > 1
    head = ["Bits", "Method"] + [_header(c, marks, multi) for c in wide.columns]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex_escape(caption)}}}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{ll" + "r" * len(wide.columns) + "}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    prev = None
    for idx in wide.index:
        bits_label, method = _row_label(idx)
        group = idx[0] if idx[1] not in REFERENCE_ROWS else "ref"
        if prev is not None and group != prev:
            lines.append(r"\midrule")
        prev = group
        cells = [_cell(wide, idx, c, marks, "tex") for c in wide.columns]
        lines.append(
            " & ".join(
                [_tex_escape(bits_label), _tex_escape(method)]
                + [c if c.startswith("\\") else _tex_escape(c) for c in cells]
            )
            + r" \\"
        )
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip\footnotesize"]
    lines += [_tex_escape(n) + r"\par" for n in notes]  # one paragraph per note
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(wide: pd.DataFrame, marks: dict) -> str:
    """Values as computed; with per-image scores each column gets its interval's bounds."""
    multi = len({c[0] for c in wide.columns}) > 1
    flat = pd.DataFrame(index=wide.index)
    for col in wide.columns:
        head = _header(col, marks, multi)
        flat[head] = wide[col]
        if marks.get("ci"):
            bounds = [marks["ci"].get((idx, col), (math.nan, math.nan)) for idx in wide.index]
            flat[f"{head} ci95_lo"] = [b[0] for b in bounds]
            flat[f"{head} ci95_hi"] = [b[1] for b in bounds]
    return flat.reset_index().to_csv(index=False)


def _metric_notes(df: pd.DataFrame) -> list[str]:
    notes = sorted({n for n in df["note"] if n and not n.startswith("skipped")})
    skipped = sorted(
        {f"{m}: {n}" for m, n in zip(df["metric"], df["note"]) if n.startswith("skipped")}
    )
    return notes + skipped


def _ranking_note(marks: dict, seed: int) -> str:
    if not marks["ci"]:
        return (
            "Best per bit setting in bold, second underlined (no per-image scores: no intervals, "
            "leads not tested)."
        )
    return (
        f"± half the width of the 95% bootstrap interval of the mean over images ({N_BOOT} "
        f"resamples, seed {seed}). Best per bit setting in bold, second underlined, when the "
        "best's lead over the second is significant (95% paired bootstrap of the difference "
        "over the same images); ≈ marks a best and a second whose difference is within that "
        "interval (a tie)."
    )


def _row_note(heading: str, values: dict[tuple[str, str], str], rows: pd.DataFrame) -> list[str]:
    """One footnote giving each row's value of a cost.csv column (its quantizers, its training
    budget), a method once when all its bit settings share it."""
    by_method: dict[str, dict[str, str]] = {}
    for method, bits in sorted(set(zip(rows["method"], rows["bits"]))):
        if method not in REFERENCE_ROWS and (method, bits) in values:
            by_method.setdefault(method, {})[bits] = values[(method, bits)]
    parts = []
    for method, per_bits in by_method.items():
        label = METHODS.label(method)
        if len(set(per_bits.values())) == 1:
            parts.append(f"{label}: {next(iter(per_bits.values()))}")
        else:
            parts += [f"{label} {b.upper()}: {q}" for b, q in per_bits.items()]
    return [f"{heading}: " + " | ".join(parts) + "."] if parts else []


def _quantizer_note(quantizers: dict[tuple[str, str], str], rows: pd.DataFrame) -> list[str]:
    """Each row's quantizers as its saved layout records them (cost.csv)."""
    return _row_note("Quantizers per row (read from each saved model)", quantizers, rows)


def _budget_note(budgets: dict[tuple[str, str], str], rows: pd.DataFrame) -> list[str]:
    """Each learned row's training budget as its quantize job recorded it (cost.csv); the
    training-free methods ("none") are left out."""
    trained = {k: v for k, v in budgets.items() if v not in ("none", "not recorded")}
    return _row_note(
        "Training budgets per row (iterations or steps, as each quantize job ran)", trained, rows
    )


def _write_table(
    df: pd.DataFrame,
    datasets: list[str],
    out: Path,
    stem: str,
    title: str,
    footnote: list[str],
    per_image: pd.DataFrame | None = None,
    seed: int = 0,
    quantizers: dict[tuple[str, str], str] | None = None,
    budgets: dict[tuple[str, str], str] | None = None,
) -> None:
    wide, marks = build_table(df, datasets, per_image, seed)
    if wide.empty:
        return
    sub = df[df["dataset"].isin(datasets)]
    seeds = ", ".join(str(s) for s in sorted(sub["seed"].unique()))
    counts = ", ".join(
        f"{d} ({int(sub[sub['dataset'] == d]['n_images'].max())} images)"
        for d in datasets
        if d in set(sub["dataset"])
    )
    notes = [
        *footnote,
        f"Data: {counts}; seed {seeds}.",
        *CONVENTIONS,
        *_quantizer_note(quantizers or {}, sub),
        *_budget_note(budgets or {}, sub),
        *_metric_notes(sub),
        _ranking_note(marks, seed),
    ]
    write_markdown_table(out / f"{stem}.md", to_markdown(wide, marks, title, notes))
    atomic_write_text(out / f"{stem}.tex", to_latex(wide, marks, title, notes))
    atomic_write_text(out / f"{stem}.csv", to_csv(wide, marks))


COST_NOTE = (
    "Sizes and BOPs from quantface.quant.cost: quantized weights at w_bits, step sizes and zero "
    "points at 32 bit, all other parameters FP32; MACs measured by hooks on one image; BOPs = MACs "
    "x w_bits x a_bits (matmuls a_bits^2), FP32 sites at 32 x 32; norms/activations/softmax not "
    "counted. Reductions are relative to FP32; a method's extra FP parameters and MACs (scales, "
    "rotations, low-rank branches) are included."
)


def cost_long(cost: pd.DataFrame) -> pd.DataFrame:
    """cost.csv rows as metrics.csv-style rows (dataset 'cost'), so one renderer serves both."""
    rows = []
    for r in cost.to_dict("records"):
        for key, (_, scale, hib, _) in COST_COLUMNS.items():
            rows.append(
                {
                    "model": r["model"],
                    "method": r["method"],
                    "bits": str(r["bits"]),
                    "dataset": "cost",
                    "metric": f"cost:{key}",
                    "value": float(r[key]) * scale,
                    "higher_is_better": hib,
                    "note": "",
                }
            )
    return pd.DataFrame(rows)


def write_cost_table(cost: pd.DataFrame, out: Path, footnote: list[str]) -> None:
    """Cost table (md, html, tex, csv) in the quality tables' layout: FP on top, grouped by bits."""
    wide, marks = build_table(cost_long(cost), ["cost"])
    if wide.empty:
        return
    models = ", ".join(sorted(set(cost["model"])))
    notes = [
        *(footnote or [f"Model(s): {models}."]),
        COST_NOTE,
        "Best per bit setting in bold, second underlined.",
    ]
    title = "Model cost"
    write_markdown_table(out / "cost.md", to_markdown(wide, marks, title, notes))
    atomic_write_text(out / "cost.tex", to_latex(wide, marks, title, notes))
    atomic_write_text(out / "cost.csv", to_csv(wide, marks))


def split_datasets(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(paired, no-reference) datasets: paired ones were scored with full-reference metrics."""
    paired = sorted(set(df[df["metric"].isin(FULL_REFERENCE)]["dataset"]))
    return paired, sorted(set(df["dataset"]) - set(paired))


def write_tables(
    metrics: Path | list[Path],
    cost: Path | list[Path] | None,
    out: Path,
    synthetic: list[str] | None = None,
    realworld: list[str] | None = None,
    footnote: list[str] | None = None,
    ablation: list[str] | None = None,
    ablation_reference: list[str] | None = None,
    per_image: list[Path] | None = None,
    seed: int = 0,
) -> None:
    """Every table from metrics (and cost) CSVs; several files are merged like shards.

    Datasets default to: scored with full-reference metrics -> Table 1, the rest -> Table 3.
    `ablation` (variant names) adds ablation.{md,html,tex,csv} on the Table 1 datasets, with the FP
    row and the `ablation_reference` methods beside them; variants stay out of Tables 1 and 3.
    Rows of a protocol ("<protocol>/<method>") get their own Tables 1 and 3 and the quantizer
    effect table (quantface/report/protocols.py), and stay out of the native ones; seed cells
    ("seed<s>/<method>") give seeds.{md,html,tex,csv}, mean ± std over seeds (quantface/report/seeds.py).
    """
    footnote = footnote or []
    everything = read_metrics(list(metrics) if isinstance(metrics, list) else [metrics])
    scores = read_per_image(per_image) if per_image else None
    nested = everything["method"].astype(str).str.contains("/")  # protocol and seed cells
    df = everything[~everything["method"].isin(ablation or []) & ~nested]
    paired, unpaired = split_datasets(df)
    synthetic = paired if synthetic is None else synthetic
    realworld = unpaired if realworld is None else realworld
    out.mkdir(parents=True, exist_ok=True)
    paths = [] if cost is None else (cost if isinstance(cost, list) else [cost])
    costs = None
    if paths:
        frames = [pd.read_csv(p, dtype={"bits": str}) for p in paths]
        costs = pd.concat(frames, ignore_index=True).drop_duplicates(
            subset=["model", "method", "bits"], keep="last"
        )
    quantizers, budgets = (
        dict(zip(zip(costs["method"], costs["bits"]), costs[column]))
        if costs is not None and column in costs
        else {}
        for column in ("quantizer", "budget")
    )
    stats = {"per_image": scores, "seed": seed, "quantizers": quantizers, "budgets": budgets}
    _write_table(
        df,
        synthetic,
        out,
        "table1_synthetic",
        "Table 1: synthetic test set (paired)",
        footnote,
        **stats,
    )
    _write_table(
        df,
        realworld,
        out,
        "table3_realworld",
        "Table 3: real-world test sets (no reference)",
        footnote,
        **stats,
    )
    if nested.any():
        from quantface.report.protocols import write_protocol_tables
        from quantface.report.seeds import write_seed_table

        sets = {
            "table1_synthetic": ("Table 1: synthetic test set (paired)", synthetic),
            "table3_realworld": ("Table 3: real-world test sets (no reference)", realworld),
        }
        write_protocol_tables(
            everything, scores, quantizers, sets, out, footnote, seed, budgets=budgets
        )
        write_seed_table(everything, seed, [*synthetic, *realworld], out, footnote)
    if ablation:
        keep = ["fp", *(ablation_reference or []), *ablation]
        rows = everything[everything["method"].isin(keep)]
        title = "Ablation (synthetic test set)"
        _write_table(rows, synthetic, out, "ablation", title, footnote, **stats)
    if costs is not None:
        from quantface.report.seeds import is_seed_cell

        write_cost_table(costs[~is_seed_cell(costs["method"])], out, footnote)  # as native
