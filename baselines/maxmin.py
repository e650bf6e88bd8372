"""MaxMin (round-to-nearest with min-max ranges), the paper's weakest baseline.

What it is (methods.md §2; cited as "MaxMin" by PassionSR and QuantFace, no code published):
- weights: per-output-channel asymmetric, range = the channel's min and max, round to nearest,
  no clipping;
- activations: per-tensor asymmetric *static*, range = global min/max over the calibration set
  (no EMA, no percentile), taken from the cached FP calibration statistics;
- attention QK^T and AV: both operands per-tensor static at the activation bit-width;
- every UNet and VAE Linear/Conv2d is quantized, first and last convolutions included (MaxMin has
  no paper-specified exceptions); the visual prompt embedder stays FP as for every method.

Adaptation: none needed; it is architecture-agnostic.
"""

from __future__ import annotations

import copy
from typing import Any

from quantface.models.base import RestorerBundle
from quantface.quant.apply import calibrate_weights, set_activation_ranges, standard_layout
from quantface.quant.calibration import CalibrationSet
from quantface.quant.layers import wrap_model
from quantface.quant.plan import BitPlan
from quantface.registry import METHODS


@METHODS.register("maxmin")
class MaxMin:
    """Round-to-nearest, per-channel min-max weights, per-tensor static min-max activations."""

    label = "MaxMin"  # how tables and figures name it

    name = "maxmin"

    def quantize(
        self, fp: RestorerBundle, calib: CalibrationSet, plan: BitPlan, cfg: dict[str, Any]
    ) -> RestorerBundle:
        model = copy.deepcopy(fp)
        wrap_model(model, standard_layout(model.quant_targets(), plan))
        calibrate_weights(model, "minmax")
        set_activation_ranges(model, calib, "minmax")
        return model.eval()
