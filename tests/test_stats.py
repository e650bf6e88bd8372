"""Per-image scores, bootstrap intervals and ties in the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantface.metrics_format import COLUMNS, PER_IMAGE_COLUMNS
from quantface.report import stats
from quantface.report.tables import write_tables


def test_bootstrap_interval_of_a_hand_computed_case():
    """Two images scoring 0 and 2: a resampled mean is 0, 1 or 2 with probability 1/4, 1/2,
    1/4, so the 2.5th and 97.5th percentiles are 0 and 2."""
    assert stats.mean_interval(np.array([0.0, 2.0]), seed=0, n_boot=4000) == (0.0, 2.0)
    # a constant paired difference is certain, however much the images themselves vary
    x = np.array([10.0, 30.0, 20.0, 50.0])
    assert stats.paired_difference_interval(x + 0.25, x, seed=0) == pytest.approx((0.25, 0.25))


def test_pairing_separates_a_small_consistent_lead_from_noise():
    rng = np.random.default_rng(0)
    images = rng.normal(30, 5, size=24)  # the images differ far more than the methods do
    a, b = images + 0.2, images
    lo_a, _ = stats.mean_interval(a, seed=0)
    _, hi_b = stats.mean_interval(b, seed=0)
    assert lo_a < hi_b  # the unpaired intervals overlap...
    assert stats.lead_is_significant(a, b, higher_is_better=True, seed=0)  # ...the lead is real
    noisy = images + rng.normal(0.2, 3, size=24)
    assert not stats.lead_is_significant(noisy, b, higher_is_better=True, seed=0)
    assert stats.lead_is_significant(b, a, higher_is_better=False, seed=0)  # lower is better


def test_same_seed_same_resamples():
    v = np.arange(10.0)
    assert stats.mean_interval(v, seed=3) == stats.mean_interval(v, seed=3)
    assert stats.mean_interval(v, seed=3) != stats.mean_interval(v, seed=4)


def _study(tmp_path, per_method: dict[str, np.ndarray]):
    rows, per_image = [], []
    for method, values in per_method.items():
        bits = "fp32" if method == "fp" else "w4a4"
        base = {"model": "tiny", "method": method, "bits": bits, "dataset": "syn"}
        rows.append(
            {
                **base,
                "w_bits": 4,
                "a_bits": 4,
                "metric": "psnr",
                "value": values.mean(),
                "higher_is_better": True,
                "n_images": len(values),
                "seed": 0,
                "note": "",
            }
        )
        per_image += [
            {**base, "metric": "psnr", "image": f"{i:03d}.png", "value": v}
            for i, v in enumerate(values)
        ]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame(per_image, columns=PER_IMAGE_COLUMNS).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "t"
    write_tables(tmp_path / "m.csv", None, out, ["syn"], [], per_image=[tmp_path / "p.csv"])
    lines = (out / "table1_synthetic.md").read_text().splitlines()
    return {row.split("|")[2].strip(): row for row in lines if row.startswith("| W4A4")}, out


def test_a_lead_within_noise_is_a_tie_not_bold(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(30, 4, size=16)
    rows, _ = _study(
        tmp_path,
        {
            "fp": images + 3,
            "a": images + rng.normal(0.05, 2, size=16),  # best by a hair, within noise
            "b": images,
            "c": images - 5,
        },
    )
    assert "≈" in rows["a"] and "≈" in rows["b"] and "**" not in rows["a"]
    assert "≈" not in rows["c"] and "±" in rows["c"]


def test_a_significant_lead_is_bold_with_its_interval(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(30, 4, size=16)
    rows, out = _study(tmp_path, {"a": images + 1.0, "b": images, "c": images - 2})
    assert "**" in rows["a"] and "±" in rows["a"] and "≈" not in rows["a"]
    assert "<u>" in rows["b"]
    csv = pd.read_csv(out / "table1_synthetic.csv")
    a = csv[csv["method"] == "a"].iloc[0]
    lo, hi = stats.mean_interval(images + 1.0, seed=0)
    assert a["PSNR↑ ci95_lo"] == pytest.approx(lo) and a["PSNR↑ ci95_hi"] == pytest.approx(hi)
    tex = (out / "table1_synthetic.tex").read_text()
    assert r"\textbf{" in tex and r"$\pm$" in tex and "±" not in tex


def test_quality_vs_bits_draws_the_intervals(tmp_path, monkeypatch):
    import matplotlib.axes

    from quantface.report.figures import write_figures

    rng = np.random.default_rng(3)
    _study(tmp_path, {"a": rng.normal(30, 2, 8), "b": rng.normal(29, 2, 8)})
    bars = []
    real = matplotlib.axes.Axes.errorbar

    def record(self, x, y, yerr=None, **kw):
        bars.append(yerr)
        return real(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    write_figures([tmp_path / "m.csv"], tmp_path / "f", per_image=[tmp_path / "p.csv"])
    assert (tmp_path / "f" / "quality_vs_bits_syn.png").is_file()
    assert len(bars) == 2 and all(b is not None and (b > 0).all() for b in bars)
