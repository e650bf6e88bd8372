"""The matched protocol in the tables: its own Tables 1/3, kept out of the native ones, and the
quantizer-effect table with a paired interval that says when native minus matched is noise."""

import numpy as np
import pandas as pd

from quantface.metrics_format import COLUMNS, PER_IMAGE_COLUMNS
from quantface.report.aggregate import COST_COLUMNS
from quantface.report.tables import write_tables


def _write(tmp_path, per_method):
    rows, per_image = [], []
    for method, values in per_method.items():
        bits = "fp32" if method == "fp" else "w4a4"
        base = {"model": "tiny", "method": method, "bits": bits, "dataset": "syn"}
        rows.append(
            {
                **base,
                "w_bits": 4,
                "a_bits": 4,
                "metric": "psnr_fp" if method != "fp" else "psnr",
                "value": values.mean(),
                "higher_is_better": True,
                "n_images": len(values),
                "seed": 0,
                "note": "",
            }
        )
        per_image += [
            {**base, "metric": rows[-1]["metric"], "image": f"{i:03d}.png", "value": v}
            for i, v in enumerate(values)
        ]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame(per_image, columns=PER_IMAGE_COLUMNS).to_csv(tmp_path / "p.csv", index=False)
    cost = pd.DataFrame(
        [
            {
                **dict.fromkeys(COST_COLUMNS, 1.0),
                "model": "tiny",
                "method": m,
                "bits": "w4a4",
                "quantizer": q,
            }
            for m, q in (
                ("a", "A: per-token dynamic asym"),
                ("matched/a", "A: per-tensor static asym"),
            )
        ]
    )
    cost.to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "t"
    write_tables(
        tmp_path / "m.csv", tmp_path / "c.csv", out, ["syn"], [], per_image=[tmp_path / "p.csv"]
    )
    return out


def test_protocol_rows_get_their_own_tables_and_the_effect_table(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(30, 3, size=16)
    out = _write(
        tmp_path,
        {
            "fp": img + 5,
            "a": img + 2.0 + rng.normal(0, 0.1, 16),  # its own quantizer buys 2 dB
            "matched/a": img,
            "b": img + (noise := rng.normal(0, 2, 16)) - noise.mean(),  # no real difference
            "matched/b": img,
        },
    )
    native = (out / "table1_synthetic.md").read_text()
    assert "matched" not in native and "| W4A4 | a |" in native
    matched = (out / "table1_synthetic_matched.md").read_text()
    assert "matched protocol" in matched and "| FP" in matched
    assert "per-tensor static asym" in matched and "per-token" not in matched
    effect = pd.read_csv(out / "quantizer_effect_matched.csv")
    a = effect[effect["method"] == "a"].iloc[0]
    b = effect[effect["method"] == "b"].iloc[0]
    assert abs(a["difference"] - 2.0) < 0.1 and a["ci95_lo"] > 0 and a["verdict"] == "native better"
    assert b["ci95_lo"] < 0 < b["ci95_hi"] and b["verdict"] == "within noise"
    assert (out / "quantizer_effect_matched.md").read_text().count("| ") > 2
    assert "\\toprule" in (out / "quantizer_effect_matched.tex").read_text()
