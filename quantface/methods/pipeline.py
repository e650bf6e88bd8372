"""One quantization pipeline: every method is a recipe, and `quantize_bundle` runs it.

A method no longer writes its own prologue (options, deep copy, sites, layout, wrapping, range
initialisation, `.eval()`) or hands results back through an attribute on the model. It says
what it does, as a `Recipe` built on the pipeline's copy of the FP model, and the pipeline runs
the stages in one order for all of them (deepcompressor's: transform, then weights, then
activations):

1. copy the FP model; `method.recipe(model, fp, calib, plan, opts, scheme)` may edit the copy
   FP-exactly before wrapping (`fp` itself is only read: distillation and block targets) (QuaRot and QuantFace rotate attention heads) and returns the
   recipe: its plan (exceptions applied), per-layer input transforms, split inputs and
   overrides of the scheme's specs, and its notes;
2. wrap every planned site with the layout the scheme, plan and recipe give;
3. `transform`: the method's FP-exact edits of the wrapped model (smoothing, Hadamards,
   balancing, low-rank branches, equivalent-transform initialisation);
4. weight ranges (the scheme's `weight_init`), then static activation ranges: from the cached
   calibration statistics (`act_ranges="cached"`) or observed by FP forwards of the transformed
   model (`"observed"`; none run when no activation quantizer is static);
5. `refine`: reconstruction or distillation, returning notes for plan.json.

The result (`QuantizeResult`) holds the model, the plan it really runs, its notes, the seconds
it took and its cost table, and saves itself as the workflow's three files.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from quantface.errors import NumericsError
from quantface.memory import enter_stage
from quantface.quant.apply import (
    calibrate_weights,
    current_layout,
    observe_activation_ranges,
    plan_of,
    set_activation_ranges,
)
from quantface.quant.cost import cost_table
from quantface.quant.describe import quantizer_summary
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import wrap_model

if TYPE_CHECKING:
    from quantface.methods.options import Options
    from quantface.models.base import RestorerBundle
    from quantface.quant.calibration import CalibrationSet


@dataclass
class Recipe:
    """What one method does to the model, for the pipeline to run (module docstring).

    plan: the bits to lay out, after the method's exceptions (`plan.at_least(...)`);
    transforms, splits: per-layer run-time input transforms and split inputs (scheme.layout);
    overrides: layer -> its LayerQuant instead of the scheme's (Q-Diffusion's 16-bit softmax);
    notes: plan.json notes known before running (exceptions, budget cuts);
    transform: FP-exact edits of the wrapped model, before any range is set;
    act_ranges: "cached" (the calibration statistics), "observed" (forwards over
    `range_images`, default the calibration images, `range_batch` at a time) or "none";
    refine: the learning stage (reconstruction, distillation); returns more notes.
    """

    plan: BitPlan
    transforms: Mapping[str, InputTransform] = field(default_factory=dict)
    splits: Mapping[str, int] = field(default_factory=dict)
    overrides: Mapping[str, LayerQuant] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    transform: Callable[[RestorerBundle], None] | None = None
    act_ranges: Literal["cached", "observed", "none"] = "observed"
    range_images: Tensor | None = None
    range_batch: int = 8
    refine: Callable[[RestorerBundle], Mapping[str, str] | None] | None = None


@dataclass
class QuantizeResult:
    """A quantized model with what the tables need about it; `save` writes the three files the
    workflow reads (model.pt, plan.json, cost.json) together, atomically."""

    model: RestorerBundle
    plan: BitPlan
    seconds: float
    method: str
    bits: str
    seed: int
    cost: dict[str, Any]  # cost.json: BOPs, sizes and the quantizer summary, as it runs
    notes: dict[str, str] = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> None:
        from quantface.io import atomic_paths
        from quantface.models.checkpoint import save_bundle

        out = Path(out_dir)
        meta = {"method": self.method, "bits": self.bits, "seed": self.seed, "simulated": True}
        with atomic_paths(out / "plan.json", out / "cost.json", out / "model.pt") as (p, c, m):
            self.plan.save(p)
            c.write_text(json.dumps(self.cost, indent=1))
            save_bundle(self.model, m, layout=current_layout(self.model), meta=meta)


def quantize_bundle(
    method: str,
    fp: RestorerBundle,
    calib: CalibrationSet,
    plan: BitPlan,
    options: Mapping[str, Any] | None = None,
    scheme: QuantScheme | None = None,
    *,
    bits: str = "",
    seed: int = 0,
    label: str | None = None,
) -> QuantizeResult:
    """Run the registered `method`'s recipe on a copy of `fp` (never modified) at `plan`.

    `options`: the method's `method_options` (read once into its options dataclass); `scheme`
    replaces its native quantizers (the matched protocol), its algorithm unchanged; `seed`
    seeds torch first, so the same call gives the same model.
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, recipe, scheme_used, opts = wrapped_copy(method, fp, calib, plan, options, scheme)
    if recipe.transform is not None:
        recipe.transform(model)
    calibrate_weights(model, scheme_used.weight_init)
    if recipe.act_ranges == "cached":
        set_activation_ranges(model, calib, scheme_used.act_init)
    elif recipe.act_ranges == "observed":
        images = calib.images if recipe.range_images is None else recipe.range_images
        observe_activation_ranges(model, images, recipe.range_batch, scheme_used.act_init)
    notes = {**recipe.plan.notes, **recipe.notes}
    if recipe.refine is not None:
        notes.update(recipe.refine(model) or {})
    model.eval()
    seconds = time.perf_counter() - t0
    _check_finite(model)
    enter_stage("cost")
    final = plan_of(model, notes or None)
    cost = cost_table(model, final)
    cost.update(
        model=model.name,
        method=label or method,
        bits=bits,
        calibration_seconds=seconds,
        algorithm=method,
        quantizer=quantizer_summary(current_layout(model)),
        scheme=scheme.to_dict() if scheme else "native",
        budget=opts.budget_summary(),
    )
    return QuantizeResult(model, final, seconds, method, bits, seed, cost, notes)


def wrapped_copy(
    method: str,
    fp: RestorerBundle,
    calib: CalibrationSet,
    plan: BitPlan,
    options: Mapping[str, Any] | None = None,
    scheme: QuantScheme | None = None,
) -> tuple[RestorerBundle, Recipe, QuantScheme, Options]:
    """Stages 1-2 only: the copy of `fp` with the method's recipe wrapped in, before any
    transform or range (what a test of one later stage starts from); the recipe, the scheme
    it runs with and the method's options read from `options`."""
    from quantface.registry import METHODS

    algorithm = METHODS.get(method)()
    opts = algorithm.options.from_dict(dict(options or {}), method)
    scheme = scheme or algorithm.native_scheme(opts)
    model = copy.deepcopy(fp).eval()
    recipe = algorithm.recipe(model, fp, calib, plan, opts, scheme)
    layout = scheme.layout(
        model, model.quant_targets(), recipe.plan, recipe.transforms, recipe.splits
    )
    wrap_model(model, {**layout, **recipe.overrides})
    return model, recipe, scheme, opts


def _check_finite(model: RestorerBundle) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NumericsError(
                f"quantization produced non-finite values in {name}; nothing was written"
            )
