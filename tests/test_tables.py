import pandas as pd

from quantface.evaluate import COLUMNS
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
    assert body[0].startswith("| – | Input (LQ)") and body[1].startswith("| W32A32 | FP")
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
