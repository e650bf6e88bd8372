"""The Method protocol every quantization method implements (DESIGN §4)."""

from __future__ import annotations

from typing import Any, Protocol

from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan


class Method(Protocol):
    """`quantize` returns a new bundle whose target layers carry frozen quantizers.

    The FP bundle passed in is never modified. Any higher-precision exception a method makes is
    visible in the returned model's layout (and so in plan.json and cost.json).
    """

    name: str

    def quantize(
        self, fp: RestorerBundle, calib: CalibrationSet, plan: BitPlan, cfg: dict[str, Any]
    ) -> RestorerBundle: ...
