"""`seeds`: every native cell again per extra global seed, summarized as mean ± std over seeds,
and kept out of the native tables, the protocol tables and the cost table."""

import numpy as np
import pandas as pd

from quantface.metrics_format import COLUMNS
from quantface.report.aggregate import COST_COLUMNS
from quantface.report.seeds import seed_rows, summarize
from quantface.report.tables import write_tables


def _row(method, bits, value, metric="psnr_fp", dataset="syn"):
    return {
        "model": "tiny",
        "method": method,
        "bits": bits,
        "dataset": dataset,
        "w_bits": 4,
        "a_bits": 4,
        "metric": metric,
        "value": value,
        "higher_is_better": True,
        "n_images": 8,
        "seed": 0,
        "note": "",
    }


def _metrics(tmp_path):
    rows = [_row("fp", "fp32", 30.0, metric="psnr")]
    # a at w4a4 over seeds 0 (the run's), 3 and 7: 20, 22, 27 -> mean 23, sample std sqrt(13)
    rows += [_row("a", "w4a4", 20.0), _row("seed3/a", "w4a4", 22.0), _row("seed7/a", "w4a4", 27.0)]
    rows += [_row("matched/a", "w4a4", 18.0), _row("b", "w4a4", 25.0)]  # b: no seed cells
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    cost = pd.DataFrame(
        [
            {**dict.fromkeys(COST_COLUMNS, 1.0), "model": "tiny", "method": m, "bits": "w4a4"}
            for m in ("a", "seed3/a", "seed7/a", "matched/a", "b")
        ]
    )
    cost.to_csv(tmp_path / "c.csv", index=False)
    return pd.DataFrame(rows)


def test_seed_summary_is_the_mean_and_sample_std_over_the_runs_and_the_extra_seeds(tmp_path):
    rows = seed_rows(_metrics(tmp_path), run_seed=0)
    assert sorted(rows["seed"]) == [0, 3, 7] and set(rows["method"]) == {"a"}
    stats = summarize(rows).iloc[0]
    assert stats["mean"] == 23.0 and stats["n"] == 3
    assert np.isclose(stats["std"], np.sqrt(((20 - 23) ** 2 + (22 - 23) ** 2 + 4**2) / 2))


def test_seed_table_is_written_and_seed_cells_stay_out_of_the_other_tables(tmp_path):
    _metrics(tmp_path)
    out = tmp_path / "t"
    write_tables(tmp_path / "m.csv", tmp_path / "c.csv", out, ["syn"], [])
    md = (out / "seeds.md").read_text()
    assert "23.00 ± 3.61 (n=3)" in md and "seeds 0, 3, 7" in md and "| b |" not in md
    csv = pd.read_csv(out / "seeds.csv")
    assert list(csv[["seed0", "seed3", "seed7"]].iloc[0]) == [20.0, 22.0, 27.0]
    for table in ("table1_synthetic.md", "table1_synthetic_matched.md", "cost.md"):
        text = (out / table).read_text()
        assert "seed3" not in text and "seed7" not in text, table
    assert not (out / "table1_synthetic_seed3.md").exists()  # a seed is not a protocol


def test_no_seed_cells_no_seed_table(tmp_path):
    rows = [_row("fp", "fp32", 30.0, metric="psnr"), _row("a", "w4a4", 20.0)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    write_tables(tmp_path / "m.csv", None, tmp_path / "t", ["syn"], [])
    assert not (tmp_path / "t" / "seeds.md").exists()
