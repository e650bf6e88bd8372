"""Every table row names the quantizers its saved model really used."""

from __future__ import annotations

import pandas as pd

from quantface.methods.pipeline import quantize_bundle
from quantface.quant.apply import current_layout
from quantface.quant.calibration import collect_calibration
from quantface.quant.describe import quantizer_summary
from quantface.quant.plan import BitPlan
from quantface.report.tables import write_tables
from tests.test_stats import _study


def _quantized(method, model, images, options=None):
    calib = collect_calibration(model, images, 2, 32, 0)
    plan = BitPlan.uniform(model.quant_targets(), 4, 4)
    return quantize_bundle(method, model, calib, plan, options or {}).model


def test_the_summary_reads_the_layout(micro_model, micro_images):
    maxmin = quantizer_summary(current_layout(_quantized("maxmin", micro_model, micro_images)))
    assert maxmin == "A: per-tensor static asym; W: per-channel asym", maxmin
    quarot = quantizer_summary(current_layout(_quantized("quarot", micro_model, micro_images)))
    assert quarot.startswith("A: per-token dynamic"), quarot
    assert quantizer_summary({}) == "FP32 (nothing quantized)"


def test_tables_footnote_each_rows_quantizers(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    _study(tmp_path, {"maxmin": rng.normal(30, 1, 4), "quarot": rng.normal(30, 1, 4)})
    cost = pd.DataFrame(
        [
            {"model": "tiny", "method": "maxmin", "bits": "w4a4", "params": 1, "size_bytes": 1,
             "param_bits_reduction": 0.5, "macs": 1, "bops": 1, "bops_reduction": 0.5,
             "calibration_seconds": 1, "quantizer": "A: per-tensor static asym; W: per-channel asym"},
            {"model": "tiny", "method": "quarot", "bits": "w4a4", "params": 1, "size_bytes": 1,
             "param_bits_reduction": 0.5, "macs": 1, "bops": 1, "bops_reduction": 0.5,
             "calibration_seconds": 1, "quantizer": "A: per-token dynamic asym; W: per-channel sym"},
        ]
    )  # fmt: skip
    cost.to_csv(tmp_path / "c.csv", index=False)
    write_tables(tmp_path / "m.csv", [tmp_path / "c.csv"], tmp_path / "t", ["syn"], [])
    md = (tmp_path / "t" / "table1_synthetic.md").read_text()
    assert "MaxMin: A: per-tensor static asym; W: per-channel asym" in md
    assert "QuaRot: A: per-token dynamic asym; W: per-channel sym" in md


def test_tables_footnote_each_learned_rows_training_budget(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    _study(tmp_path, {"maxmin": rng.normal(30, 1, 4), "efficientdm": rng.normal(30, 1, 4)})
    row = {"model": "tiny", "bits": "w4a4", "params": 1, "size_bytes": 1, "macs": 1, "bops": 1,
           "param_bits_reduction": 0.5, "bops_reduction": 0.5, "calibration_seconds": 1,
           "quantizer": "A: per-tensor static asym; W: per-channel asym"}  # fmt: skip
    cost = pd.DataFrame(
        [{**row, "method": "maxmin", "budget": "none"},
         {**row, "method": "efficientdm", "budget": "steps 40"}]
    )  # fmt: skip
    cost.to_csv(tmp_path / "c.csv", index=False)
    write_tables(tmp_path / "m.csv", [tmp_path / "c.csv"], tmp_path / "t", ["syn"], [])
    md = (tmp_path / "t" / "table1_synthetic.md").read_text()
    budget_line = next(line for line in md.splitlines() if "Training budgets" in line)
    assert "EfficientDM: steps 40" in budget_line
    assert "MaxMin" not in budget_line  # a training-free method has no budget to state


def test_the_quantize_cost_record_names_the_budget_it_ran(micro_model, micro_images):
    from baselines.qdiffusion import QDiffusionOptions

    assert QDiffusionOptions(w_iters=3, a_iters=2).budget_summary() == "w_iters 3, a_iters 2"
    calib = collect_calibration(micro_model, micro_images, 2, 32, 0)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    for method, options, budget in [
        ("maxmin", {}, "none"),
        ("efficientdm", {"steps": 2}, "steps 2"),
    ]:
        assert quantize_bundle(method, micro_model, calib, plan, options).cost["budget"] == budget
