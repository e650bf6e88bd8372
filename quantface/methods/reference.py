"""The full-precision reference 'method' (the FP rows of every table)."""

from __future__ import annotations

from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.registry import METHODS


@METHODS.register("fp")
class FullPrecision:
    """Full-precision (FP32) reference: the model as trained, nothing quantized."""

    label = "FP"  # how tables and figures name it

    name = "fp"

    options = Options  # no options

    def native_scheme(self, opts: Options) -> QuantScheme:
        return QuantScheme()  # never used: nothing is planned

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: Options,
        scheme: QuantScheme,
    ) -> Recipe:
        """Nothing planned, nothing wrapped: the pipeline's copy of the FP model as it is."""
        return Recipe(BitPlan({}), act_ranges="none")
