"""The Method protocol every quantization method implements."""

from __future__ import annotations

from typing import Any, Protocol

from quantface.methods.options import Options
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme


class Method(Protocol):
    """`quantize` returns a new bundle whose target layers carry frozen quantizers.

        The FP bundle passed in is never modified. Any higher-precision exception a method makes is
        visible in the returned model's layout (and so in plan.json and cost.json). `native_scheme`
        gives the quantizers of the method's paper for its options (its `options` dataclass,
    `quantface.methods.options`, read once from the `cfg` dict); `quantize` runs with
        it unless a `scheme` is given (the matched protocol: one scheme for every method, the
        method's algorithm unchanged).
    """

    name: str

    def native_scheme(self, opts: Options) -> QuantScheme: ...

    def quantize(
        self,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        cfg: dict[str, Any],
        scheme: QuantScheme | None = None,
    ) -> RestorerBundle: ...


def smoothable(model: RestorerBundle, plan: BitPlan) -> list[str]:
    """Quantized Linear/Conv2d sites with an ungrouped weight (channel scaling is exact there)."""
    sites = model.quant_targets()
    return [
        n
        for n in plan
        if sites[n] != "matmul" and getattr(model.get_submodule(n), "groups", 1) == 1
    ]
