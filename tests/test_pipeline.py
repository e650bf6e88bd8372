"""The one quantization pipeline (quantface/methods/pipeline.py): stage order, notes, results.

Every method is a recipe the pipeline runs; these tests check the pipeline's own promises (the
order of the stages, the FP model left alone, notes and the final plan in the result, a result
that saves and loads back as it ran) for every registered method, and on a recipe written here.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import ClassVar

import pytest
import torch

from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe, quantize_bundle
from quantface.models.checkpoint import load_bundle
from quantface.quant.apply import current_layout
from quantface.quant.calibration import collect_calibration
from quantface.quant.plan import BitPlan, LayerBits
from quantface.quant.scheme import QuantScheme
from quantface.registry import METHODS
from tests.test_scheme import ONE_STEP

MP_FAST = {"steps": 1, "batch_size": 2, "crop": 16, "crops_per_image": 1}
MP_FAST |= {"sensitivity_images": 1, "sensitivity_sites": 3}


@pytest.fixture
def calib(micro_model, micro_images):
    return collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_recipe_round_trips_through_the_pipeline(
    method, micro_model, micro_images, calib, tmp_path
):
    """For each method: the FP model is untouched, the result's plan is what the model runs,
    and the saved files load back into the same model, plan and cost."""
    mixed = METHODS.attr(method, "mixed_precision", False)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    options = MP_FAST if mixed else ONE_STEP.get(method, {})
    before = _state(micro_model)
    result = quantize_bundle(method, micro_model, calib, plan, options, bits="w4a4", seed=3)
    after = micro_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    layout = current_layout(result.model)
    assert set(result.plan) == set(layout) and (method == "fp") == (not layout)
    result.save(tmp_path / "out")
    back, back_layout, meta = load_bundle(tmp_path / "out" / "model.pt")
    assert back_layout == layout and meta["seed"] == 3 and meta["method"] == method
    assert BitPlan.load(tmp_path / "out" / "plan.json") == result.plan
    cost = json.loads((tmp_path / "out" / "cost.json").read_text())
    assert cost["algorithm"] == method and cost["rows"] == result.cost["rows"]
    with torch.no_grad():
        assert torch.equal(back.restore(micro_images), result.model.restore(micro_images))


class _Probe:
    """A method written here: records the order the pipeline calls its stages in."""

    name = "probe"
    options = Options
    calls: ClassVar[list[str]] = []

    def native_scheme(self, opts):
        return QuantScheme()

    def recipe(self, model, fp, calib, plan, opts, scheme):
        self.calls.append("recipe")
        first = next(iter(plan))

        def transform(m):
            q = m.get_submodule(first).weight_quantizer
            self.calls.append(
                f"transform wrapped={hasattr(m.get_submodule(first), 'act_quantizer')}"
            )
            self.calls.append(f"weight range set={q.scale.numel() > 0}")

        def refine(m):
            aq = m.get_submodule(first).act_quantizer
            self.calls.append(f"refine act range set={aq.scale.numel() > 0}")
            return {"probe": "refined"}

        eight = plan.with_overrides({first: LayerBits(8, 8)}, "kept at 8 bit (probe)")
        return Recipe(eight, notes={"known": "before"}, transform=transform, refine=refine)


def test_the_pipeline_runs_the_stages_in_order_and_merges_the_notes(
    micro_model, calib, monkeypatch
):
    """recipe -> wrap -> transform (no range yet) -> ranges -> refine; the recipe's plan
    exception, its own notes and the refine's all reach the result."""
    monkeypatch.setitem(METHODS._items, "probe", _Probe)
    _Probe.calls.clear()
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    result = quantize_bundle("probe", micro_model, calib, plan)
    assert _Probe.calls == [
        "recipe",
        "transform wrapped=True",
        "weight range set=False",
        "refine act range set=True",
    ]
    first = next(iter(plan))
    assert result.plan[first] == LayerBits(8, 8) and result.notes[first] == "kept at 8 bit (probe)"
    assert result.notes["known"] == "before" and result.notes["probe"] == "refined"


def test_all_dynamic_activations_skip_the_range_forwards(micro_model, calib, caplog):
    """Observing ranges is one FP forward over the calibration images; with every activation
    quantizer dynamic it would set nothing, so it does not run."""
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    with caplog.at_level(logging.INFO, logger="quantface.timing"):
        quantize_bundle("quarot", micro_model, calib, plan)  # per-token dynamic activations
        assert "stage=observe_ranges_image" not in caplog.text
        quantize_bundle("quarot", micro_model, calib, plan, scheme=QuantScheme())  # static
        assert "stage=observe_ranges_image" in caplog.text
