"""MaxMin (round-to-nearest with min-max ranges), the paper's weakest baseline.

What it is (cited as "MaxMin" by PassionSR and QuantFace, no code published):
- weights: per-output-channel asymmetric, range = the channel's min and max, round to nearest,
  no clipping;
- activations: per-tensor asymmetric *static*, range = global min/max over the calibration set
  (no EMA, no percentile), taken from the cached FP calibration statistics;
- attention QK^T and AV: both operands per-tensor static at the activation bit-width;
- every UNet and VAE Linear/Conv2d is quantized, first and last convolutions included (MaxMin has
  no paper-specified exceptions); the visual prompt embedder stays FP as for every method.

Adaptation: none needed; it is architecture-agnostic. Under the matched protocol MaxMin is the
plain round-to-nearest reference of the given scheme (its weight and static-range rules).
"""

from __future__ import annotations

from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.registry import METHODS


@METHODS.register("maxmin")
class MaxMin:
    """Round-to-nearest, per-channel min-max weights, per-tensor static min-max activations."""

    label = "MaxMin"  # how tables and figures name it

    name = "maxmin"

    options = Options  # no options

    def native_scheme(self, opts: Options) -> QuantScheme:
        return QuantScheme()  # per-channel asym min-max weights, per-tensor static min-max acts

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: Options,
        scheme: QuantScheme,
    ) -> Recipe:
        """Wrap, min-max weights, static ranges from the cached calibration extremes."""
        return Recipe(plan, act_ranges="cached")
