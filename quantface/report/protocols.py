"""The controlled comparison in tables: each non-native protocol's Tables 1 and 3, and what the
quantizer explains (per method, native minus matched, with its paired interval).

Rows of a protocol carry method names "<protocol>/<method>" (results/<model>/<protocol>/...);
the native rows are the plain method names. A protocol's tables hold its rows under the plain
names, beside the same input and FP rows, so they read like the native ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from quantface.io import atomic_write_text
from quantface.registry import METHODS
from quantface.report.html import write_markdown_table
from quantface.report.seeds import is_seed_cell
from quantface.report.stats import paired_difference_interval
from quantface.report.tables import REFERENCE_ROWS, _tex_escape, _write_table

EFFECT_METRICS = ("psnr_fp", "psnr")  # the first one present is the effect table's metric


def split_protocols(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(native rows, protocol -> its rows renamed to the plain method names); seed cells
    ("seed<s>/<method>", quantface/report/seeds.py) are neither."""
    method = df["method"].astype(str)
    protocol = method.str.partition("/")[0].where(method.str.contains("/"), "")
    native = df[protocol == ""]
    out = {}
    for p in sorted(set(protocol[~is_seed_cell(method)]) - {""}):
        rows = df[protocol == p].copy()
        rows["method"] = rows["method"].str.partition("/")[2]
        out[p] = rows
    return native, out


def protocol_values(
    values: dict[tuple[str, str], str], protocol: str
) -> dict[tuple[str, str], str]:
    """cost.csv's words (quantizers, budgets) of one protocol's rows, under the plain method
    names."""
    prefix = f"{protocol}/"
    return {(m.removeprefix(prefix), b): v for (m, b), v in values.items() if m.startswith(prefix)}


def effect_rows(
    native: pd.DataFrame,
    other: pd.DataFrame,
    native_images: pd.DataFrame | None,
    other_images: pd.DataFrame | None,
    datasets: list[str],
    seed: int,
) -> pd.DataFrame:
    """Per (method, bits, dataset) present in both: the two means and native - other, with the
    95% paired-bootstrap interval of the difference over the same images (NaN without them)."""
    present = set(native["metric"]) & set(other["metric"])
    metric = next((m for m in EFFECT_METRICS if m in present), None)
    if metric is None:
        return pd.DataFrame()
    key = ["method", "bits", "dataset"]

    def means(df: pd.DataFrame) -> pd.Series:
        sub = df[(df["metric"] == metric) & df["dataset"].isin(datasets)]
        return sub.set_index(key)["value"]

    a, b = means(native), means(other)
    rows = []
    for idx in sorted(a.index.intersection(b.index), key=lambda k: (k[2], k[1], k[0])):
        lo = hi = math.nan
        if native_images is not None and other_images is not None:
            sa, sb = _scores(native_images, idx, metric), _scores(other_images, idx, metric)
            common = sa.index.intersection(sb.index)
            if len(common) > 1:
                lo, hi = paired_difference_interval(
                    sa[common].to_numpy(), sb[common].to_numpy(), seed
                )
        rows.append(
            {
                "method": idx[0],
                "bits": idx[1],
                "dataset": idx[2],
                "metric": metric,
                "native": float(a[idx]),
                "other": float(b[idx]),
                "difference": float(a[idx] - b[idx]),
                "ci95_lo": lo,
                "ci95_hi": hi,
            }
        )
    return pd.DataFrame(rows)


def _scores(per_image: pd.DataFrame, idx: tuple, metric: str) -> pd.Series:
    m, b, d = idx
    sel = per_image[
        (per_image["method"] == m)
        & (per_image["bits"] == b)
        & (per_image["dataset"] == d)
        & (per_image["metric"] == metric)
    ]
    return sel.set_index("image")["value"].astype(float)


def _verdict(row: pd.Series) -> str:
    if math.isnan(row["ci95_lo"]):
        return "no per-image scores"
    if row["ci95_lo"] > 0:
        return "native better"
    if row["ci95_hi"] < 0:
        return f"{row['protocol']} better"
    return "within noise"


def write_effect_table(
    rows: pd.DataFrame, protocol: str, out: Path, stem: str, notes: list[str]
) -> None:
    """quantizer_effect_<protocol>.{md,html,tex,csv}: per method, native minus the protocol's."""
    if rows.empty:
        return
    rows = rows.assign(protocol=protocol)
    rows["verdict"] = rows.apply(_verdict, axis=1)
    metric = rows["metric"].iloc[0].upper().replace("_", "-")
    title = f"What the quantizer explains: native minus {protocol} protocol ({metric}, dB)"
    head = ["method", "bits", "dataset", "native", protocol, "native − " + protocol, "95% CI", ""]
    body = []
    for _, r in rows.iterrows():
        ci = "—" if math.isnan(r["ci95_lo"]) else f"[{r['ci95_lo']:+.2f}, {r['ci95_hi']:+.2f}]"
        body.append(
            [
                METHODS.label(r["method"]),
                r["bits"].upper(),
                r["dataset"],
                f"{r['native']:.2f}",
                f"{r['other']:.2f}",
                f"{r['difference']:+.2f}",
                ci,
                r["verdict"],
            ]
        )
    md = [f"**{title}**", "", "| " + " | ".join(head) + " |"]
    md.append("|" + "|".join(["---"] * 3 + ["---:"] * 4 + ["---"]) + "|")
    md += ["| " + " | ".join(line) + " |" for line in body]
    md += ["", *(f"- {n}" for n in notes)]
    write_markdown_table(out / f"{stem}.md", "\n".join(md) + "\n")
    tex = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{_tex_escape(title)}}}",
        "\\begin{tabular}{lll" + "r" * 4 + "ll}",
        "\\toprule",
        " & ".join(_tex_escape(h) for h in head) + " \\\\",
        "\\midrule",
        *(" & ".join(_tex_escape(c) for c in line) + " \\\\" for line in body),
        "\\bottomrule",
        "\\end{tabular}",
        *(f"\\par\\footnotesize {_tex_escape(n)}" for n in notes),
        "\\end{table}",
    ]
    atomic_write_text(out / f"{stem}.tex", "\n".join(tex) + "\n")
    cols = ["method", "bits", "dataset", "metric", "native", "other", "difference"]
    csv = rows[[*cols, "ci95_lo", "ci95_hi", "verdict"]].rename(columns={"other": protocol})
    atomic_write_text(out / f"{stem}.csv", csv.to_csv(index=False))


def effect_notes(seed: int, footnote: list[str]) -> list[str]:
    return [
        *footnote,
        (
            "native: each method with its paper's quantizers and exceptions; the protocol: every "
            "method with the same weight and activation quantizers, range rules and no exceptions "
            "(per row: the protocol's tables' footnotes), algorithm and seed unchanged. The "
            "difference is what the method's own quantizer adds (negative: it costs)."
        ),
        (
            f"95% CI: paired bootstrap of the per-image difference (seed {seed}); 'within noise' "
            "when it contains 0."
        ),
    ]


def write_protocol_tables(
    everything: pd.DataFrame,
    scores: pd.DataFrame | None,
    quantizers: dict[tuple[str, str], str],
    sets: dict[str, tuple[str, list[str]]],
    out: Path,
    footnote: list[str],
    seed: int,
    budgets: dict[tuple[str, str], str] | None = None,
) -> None:
    """For each protocol in the rows: its Table 1 / Table 3 (`sets`: stem -> datasets) and its
    quantizer-effect table over all those datasets. `quantizers`, `budgets`: cost.csv's words
    per (method, bits), footnoted per row."""
    native, protocols = split_protocols(everything)
    native_images, protocol_images = (None, {})
    if scores is not None:
        native_images, protocol_images = split_protocols(scores)
    reference = native[native["method"].isin(REFERENCE_ROWS)]
    for p, rows in protocols.items():
        note = [*footnote, f"{p} protocol: every method with the same quantizers (below)."]
        stats = {
            "per_image": None
            if scores is None
            else pd.concat(
                [
                    native_images[native_images["method"].isin(REFERENCE_ROWS)],
                    protocol_images.get(p),
                ]
            ),
            "seed": seed,
            "quantizers": protocol_values(quantizers, p),
            "budgets": protocol_values(budgets or {}, p),
        }
        for stem, (title, datasets) in sets.items():
            table = pd.concat([reference, rows], ignore_index=True)
            _write_table(
                table, datasets, out, f"{stem}_{p}", f"{title} — {p} protocol", note, **stats
            )
        datasets = [d for _, ds in sets.values() for d in ds]
        effect = effect_rows(native, rows, native_images, protocol_images.get(p), datasets, seed)
        write_effect_table(effect, p, out, f"quantizer_effect_{p}", effect_notes(seed, footnote))
