"""The full-precision reference 'method' (the FP rows of every table)."""

from __future__ import annotations

import copy
from typing import Any

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

    def quantize(
        self,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        cfg: dict[str, Any],
        scheme: QuantScheme | None = None,
    ) -> RestorerBundle:
        """A copy of `fp`; nothing is quantized, so no scheme changes it."""
        return copy.deepcopy(fp)
