import pandas as pd

from quantface.metrics_format import COLUMNS
from quantface.report.aggregate import aggregate_metrics
from quantface.report.tables import write_tables


def _rows():
    rows = []

    def add(method, bits, metric, value, hib, dataset="syn", note=""):
        wb = {"w4a4": 4, "w8a8": 8, "fp32": 32}.get(bits, float("nan"))
        rows.append(
            {
                "model": "tiny",
                "method": method,
                "bits": bits,
                "w_bits": wb,
                "a_bits": wb,
                "dataset": dataset,
                "metric": metric,
                "value": value,
                "higher_is_better": hib,
                "n_images": 3,
                "seed": 0,
                "note": note,
            }
        )

    add("input", "-", "psnr", 20.0, True)
    add("fp", "fp32", "psnr", 25.0, True)
    for m, v in (("a", 24.0), ("b", 23.0), ("c", 22.0)):
        add(m, "w8a8", "psnr", v, True)
    for m, v in (("a", 10.0), ("b", 18.0), ("c", 15.0)):
        add(m, "w4a4", "psnr", v, True)
    for m, v in (("a", 0.3), ("b", 0.1), ("c", 0.2)):
        add(m, "w4a4", "gmsd", v, False)
    add("b", "w4a4", "lpips", float("nan"), False, note="skipped (weights absent: x.pth)")
    add("fp", "fp32", "niqe", 5.0, False, dataset="real", note="NIQE params: test")
    add("a", "w4a4", "niqe", 6.0, False, dataset="real")
    return rows


def test_tables_mark_best_and_second_per_bit_setting(tmp_path):
    csv = tmp_path / "m.csv"
    pd.DataFrame(_rows(), columns=COLUMNS).to_csv(csv, index=False)
    write_tables(csv, None, tmp_path / "t", ["syn"], ["real"], ["Model: tiny"])
    md = (tmp_path / "t" / "table1_synthetic.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Bits"))
    assert "PSNR↑" in header and "GMSD↓" in header
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert body[0].startswith("| — | Input (LQ)") and body[1].startswith("| W32A32 | FP")
    w8 = [line for line in body if line.startswith("| W8A8")]
    w4 = [line for line in body if line.startswith("| W4A4")]
    assert "**24.00**" in w8[0] and "<u>23.00</u>" in w8[1]
    assert "**18.00**" in next(r for r in w4 if "| b |" in r)
    assert "**0.1000**" in next(r for r in w4 if "| b |" in r)  # lower GMSD is better
    assert "skipped" in next(r for r in w4 if "| b |" in r)
    assert "x.pth" in md and "Model: tiny" in md and "simulated" in md
    tex = (tmp_path / "t" / "table1_synthetic.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{24.00}" in tex and r"\underline{23.00}" in tex
    real = (tmp_path / "t" / "table3_realworld.md").read_text()
    assert "NIQE↓" in real and "NIQE params: test" in real


def test_aggregate_merges_shards_deterministically(tmp_path):
    rows = _rows()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame(rows[:5], columns=COLUMNS).to_csv(a, index=False)
    pd.DataFrame(rows[3:], columns=COLUMNS).to_csv(b, index=False)
    one = aggregate_metrics([a, b], tmp_path / "1.csv")
    two = aggregate_metrics([b, a], tmp_path / "2.csv")
    assert len(one) == len(rows)
    assert (tmp_path / "1.csv").read_text() == (tmp_path / "2.csv").read_text()
    assert one.equals(two)


def _row(method, bits, metric, value, hib, dataset="syn"):
    wb = {"fp32": 32, "w8a8": 8, "w4a4": 4, "mp4": 4}.get(bits, float("nan"))
    return {
        "model": "tiny",
        "method": method,
        "bits": bits,
        "w_bits": wb,
        "a_bits": wb,
        "dataset": dataset,
        "metric": metric,
        "value": value,
        "higher_is_better": hib,
        "n_images": 2,
        "seed": 0,
        "note": "",
    }


EXPECTED_TABLE1 = """\
| Bits | Method | PSNR↑ | GMSD↓ |
|---|---|---:|---:|
| — | Input (LQ) | 20.00 | 0.3000 |
| W32A32 | FP | 25.00 | 0.1000 |
| W8A8 | a | **24.00** | **0.1200** |
| W8A8 | b | <u>23.00</u> | <u>0.1500</u> |
| W8A8 | c | **24.00** | — |
| W4A4 | a | 10.00 | 0.3000 |
| W4A4 | b | **18.00** | **0.2000** |
| W4A4 | c | <u>15.00</u> | <u>0.2500</u> |
| MP4 | a | 17.00 | 0.2100 |
"""


def test_markdown_table_matches_hand_built_layout(tmp_path):
    """Reference rows on top, bit groups in paper order, ties share bold, gaps are '—'."""
    cells = [
        ("input", "-", 20.0, 0.3),
        ("fp", "fp32", 25.0, 0.1),
        ("c", "w8a8", 24.0, None),
        ("b", "w8a8", 23.0, 0.15),
        ("a", "w8a8", 24.0, 0.12),
        ("a", "mp4", 17.0, 0.21),  # a group of one: nothing to rank against
        ("a", "w4a4", 10.0, 0.3),
        ("b", "w4a4", 18.0, 0.2),
        ("c", "w4a4", 15.0, 0.25),
    ]
    rows = [_row(m, b, "psnr", p, True) for m, b, p, _ in cells]
    rows += [_row(m, b, "gmsd", g, False) for m, b, _, g in cells if g is not None]
    rows.append(_row("a", "w4a4", "niqe", 7.0, False, dataset="real"))
    half = len(rows) // 2  # two shards, merged by the CLI
    pd.DataFrame(rows[:half], columns=COLUMNS).to_csv(tmp_path / "m1.csv", index=False)
    pd.DataFrame(rows[half:], columns=COLUMNS).to_csv(tmp_path / "m2.csv", index=False)
    from quantface.cli import main

    out = tmp_path / "tables"
    assert (
        main(
            [
                "tables",
                "--metrics",
                str(tmp_path / "m1.csv"),
                str(tmp_path / "m2.csv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    md = (out / "table1_synthetic.md").read_text()
    table = "".join(line + "\n" for line in md.splitlines() if line.startswith("|"))
    assert table == EXPECTED_TABLE1
    # no --synthetic/--realworld: the dataset without full-reference metrics went to Table 3
    assert "NIQE↓" in (out / "table3_realworld.md").read_text()
    tex = (out / "table1_synthetic.tex").read_text()
    assert r"\textbf{24.00} & ---" in tex and tex.count(r"\midrule") == 4  # header + 3 groups


def test_cost_table_is_grouped_with_directions_and_latex(tmp_path):
    cost = pd.DataFrame(
        [
            {
                "model": "tiny",
                "method": m,
                "bits": b,
                "params": 1e6 + extra,
                "size_bytes": s,
                "param_bits_reduction": r,
                "macs": 2e9,
                "bops": bo,
                "bops_reduction": 1 - bo / 6.4e13,
                "calibration_seconds": 0.0 if m == "fp" else 1.5,
            }
            for m, b, extra, s, r, bo in [
                ("fp", "fp32", 0, 4e6, 0.0, 6.4e13),
                ("a", "w4a4", 0, 6e5, 0.85, 3.2e10),
                ("b", "w4a4", 5e4, 7e5, 0.82, 3.4e10),
            ]
        ]
    )
    cost.to_csv(tmp_path / "cost.csv", index=False)
    metrics = pd.DataFrame([_row("fp", "fp32", "psnr", 1.0, True)], columns=COLUMNS)
    metrics.to_csv(tmp_path / "m.csv", index=False)
    write_tables(tmp_path / "m.csv", tmp_path / "cost.csv", tmp_path / "t", None, None, [])
    md = (tmp_path / "t" / "cost.md").read_text().splitlines()
    assert "Size (KiB)↓" in md[2] and "BOP reduction (%)↑" in md[2]
    assert md[4].startswith("| W32A32 | FP | 1.000 | 3906.2 |")
    assert "**585.9**" in md[5] and "<u>683.6</u>" in md[6]
    tex = (tmp_path / "t" / "cost.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex


def test_every_markdown_table_has_an_html_rendering_with_the_same_marks(tmp_path):
    """The HTML twin is what the Snakemake report shows as a page: a real <table>, with the
    Markdown's bold best, underlined second and footnotes."""
    from html.parser import HTMLParser

    csv = tmp_path / "m.csv"
    pd.DataFrame(_rows(), columns=COLUMNS).to_csv(csv, index=False)
    write_tables(csv, None, tmp_path / "t", ["syn"], ["real"], ["Model: tiny"])
    for stem in ("table1_synthetic", "table3_realworld"):
        assert (tmp_path / "t" / f"{stem}.html").is_file(), stem
    page = (tmp_path / "t" / "table1_synthetic.html").read_text()

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.cells: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.append(tag)
            if tag in ("td", "th"):
                self.cells.append("")

        def handle_data(self, data: str) -> None:
            if self.cells:
                self.cells[-1] += data

    parsed = Cells()
    parsed.feed(page)
    assert parsed.tags.count("table") == 1 and "tbody" in parsed.tags
    assert {"PSNR↑", "GMSD↓", "Input (LQ)", "W4A4"} <= {c.strip() for c in parsed.cells}
    assert "<strong>24.00</strong>" in page and "<u>23.00</u>" in page
    assert "<li>Model: tiny</li>" in page and "|" not in page.split("<body>")[1]
