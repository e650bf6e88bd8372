"""The seeds table: each native cell's result as mean ± std over global seeds.

With `seeds: [0, 1, 2]` every native cell runs again per extra seed as a "seed<s>/<method>"
cell (its own calibration draw and quantization seed; the same FP model, test sets and
restoration). The run's own seed is the plain method rows. A bootstrap over images says whether
a lead is larger than the test set's noise; the spread over seeds says how much of a result is
the luck of one calibration draw, which no number of test images reveals.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from quantface.io import atomic_write_text
from quantface.registry import METHODS
from quantface.report.html import write_markdown_table
from quantface.report.tables import _bits_key, _tex_escape

SEED_CELL = re.compile(r"^seed(\d+)/(.+)$")
SEED_METRICS = ("psnr_fp", "psnr")  # the first one present is the table's metric


def is_seed_cell(method: pd.Series) -> pd.Series:
    """Which method names are "seed<s>/<method>" cells."""
    return method.astype(str).str.match(SEED_CELL.pattern)


def seed_rows(everything: pd.DataFrame, run_seed: int) -> pd.DataFrame:
    """Per (method, bits, dataset, seed): the table metric's value, for every native cell
    that has at least one seed cell beside it. Empty when no seed cells were run."""
    method = everything["method"].astype(str)
    parts = method.str.extract(SEED_CELL.pattern)
    seeded = parts[0].notna()
    if not seeded.any():
        return pd.DataFrame()
    present = set(everything.loc[seeded, "metric"])
    metric = next((m for m in SEED_METRICS if m in present), None)
    if metric is None:
        return pd.DataFrame()
    other = everything[seeded].assign(method=parts.loc[seeded, 1], seed=parts.loc[seeded, 0])
    repeated = set(other["method"])
    native = everything[~seeded & ~method.str.contains("/") & method.isin(repeated)]
    rows = pd.concat([native.assign(seed=run_seed), other], ignore_index=True)
    rows = rows[rows["metric"] == metric]
    rows = rows.assign(seed=rows["seed"].astype(int), value=rows["value"].astype(float))
    return rows[["method", "bits", "dataset", "metric", "seed", "value"]]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (n - 1) and count over seeds per (method, bits, dataset)."""
    stats = rows.groupby(["method", "bits", "dataset", "metric"])["value"].agg(
        mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else float("nan"), n="count"
    )
    return stats.reset_index()


def write_seed_table(
    everything: pd.DataFrame, run_seed: int, datasets: list[str], out: Path, footnote: list[str]
) -> None:
    """seeds.{md,html,tex,csv}: rows (bits, method), a "mean ± std" column per dataset; the csv keeps
    every seed's value beside the summary."""
    rows = seed_rows(everything, run_seed)
    if rows.empty:
        return
    rows = rows[rows["dataset"].isin(datasets)]
    stats = summarize(rows)
    metric = stats["metric"].iloc[0]
    seeds = sorted(set(rows["seed"]))
    sets = [d for d in datasets if d in set(stats["dataset"])]
    cells = stats.set_index(["bits", "method", "dataset"])
    keys = sorted({(b, m) for b, m, _ in cells.index}, key=lambda k: (*_bits_key(k[0]), k[1]))
    label = metric.upper().replace("_", "-")
    title = f"Seeds: {label} (dB) mean ± std over global seeds {', '.join(map(str, seeds))}"
    notes = [
        *footnote,
        (
            f"Each seed draws its own calibration set and quantization seed (seed {run_seed}: the "
            "tables' rows); FP model, test sets, restoration and each method's own `seed` option "
            "(Hadamard signs, LoRA init) unchanged, so a method that does not use calibration data "
            "shows no spread. std: sample standard deviation over seeds (n - 1); n: seeds per "
            "cell. Per-seed values in seeds.csv."
        ),
    ]

    def text(b: str, m: str, d: str) -> str:
        if (b, m, d) not in cells.index:
            return "—"
        c = cells.loc[(b, m, d)]
        spread = "" if pd.isna(c["std"]) else f" ± {c['std']:.2f}"
        return f"{c['mean']:.2f}{spread} (n={int(c['n'])})"

    head = ["bits", "method", *sets]
    body = [[b.upper(), METHODS.label(m), *(text(b, m, d) for d in sets)] for b, m in keys]
    md = [f"**{title}**", "", "| " + " | ".join(head) + " |"]
    md.append("|" + "|".join(["---"] * 2 + ["---:"] * len(sets)) + "|")
    md += ["| " + " | ".join(line) + " |" for line in body]
    md += ["", *(f"- {n}" for n in notes)]
    write_markdown_table(out / "seeds.md", "\n".join(md) + "\n")
    tex = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{_tex_escape(title)}}}",
        "\\begin{tabular}{ll" + "r" * len(sets) + "}",
        "\\toprule",
        " & ".join(_tex_escape(h) for h in head) + " \\\\",
        "\\midrule",
        *(" & ".join(_tex_escape(c) for c in line) + " \\\\" for line in body),
        "\\bottomrule",
        "\\end{tabular}",
        *(f"\\par\\footnotesize {_tex_escape(n)}" for n in notes),
        "\\end{table}",
    ]
    atomic_write_text(out / "seeds.tex", "\n".join(tex) + "\n")
    per_seed = rows.pivot_table(
        index=["method", "bits", "dataset", "metric"], columns="seed", values="value"
    )
    per_seed.columns = [f"seed{s}" for s in per_seed.columns]
    csv = stats.merge(per_seed.reset_index(), on=["method", "bits", "dataset", "metric"])
    atomic_write_text(out / "seeds.csv", csv.to_csv(index=False))
