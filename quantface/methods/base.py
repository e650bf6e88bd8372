"""The Method protocol every quantization method implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from quantface.methods.options import Options
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme

if TYPE_CHECKING:
    from quantface.methods.pipeline import Recipe


class Method(Protocol):
    """A quantization method: its options, its paper's quantizers and its recipe.

    `options` is its options dataclass (`quantface.methods.options`), read once from the
    `method_options` dict; `native_scheme` gives the quantizers of the method's paper for those
    options; `recipe` says what the method does to `model`, the pipeline's copy of the FP model
    `fp` (it may edit the copy FP-exactly before wrapping; `fp` is only read), with `scheme` (the native one, or the matched
    protocol's: one scheme for every method, the algorithm unchanged).
    `quantface.methods.pipeline.quantize_bundle` runs it; any higher-precision exception the
    recipe makes is visible in the quantized model's layout (so in plan.json and cost.json).
    """

    name: str
    options: type[Options]

    def native_scheme(self, opts: Options) -> QuantScheme: ...

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: Options,
        scheme: QuantScheme,
    ) -> Recipe: ...


def smoothable(model: RestorerBundle, plan: BitPlan) -> list[str]:
    """Quantized Linear/Conv2d sites with an ungrouped weight (channel scaling is exact there)."""
    sites = model.quant_targets()
    return [
        n
        for n in plan
        if sites[n] != "matmul" and getattr(model.get_submodule(n), "groups", 1) == 1
    ]
