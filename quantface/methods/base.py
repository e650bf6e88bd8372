"""The Method protocol every quantization method implements."""

from __future__ import annotations

from typing import Any, Protocol

from quantface.errors import ConfigError
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme


class Method(Protocol):
    """`quantize` returns a new bundle whose target layers carry frozen quantizers.

    The FP bundle passed in is never modified. Any higher-precision exception a method makes is
    visible in the returned model's layout (and so in plan.json and cost.json). `native_scheme`
    gives the quantizers of the method's paper for its (checked) options; `quantize` runs with
    it unless a `scheme` is given (the matched protocol: one scheme for every method, the
    method's algorithm unchanged).
    """

    name: str

    def native_scheme(self, opts: dict[str, Any]) -> QuantScheme: ...

    def quantize(
        self,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        cfg: dict[str, Any],
        scheme: QuantScheme | None = None,
    ) -> RestorerBundle: ...


def check_options(
    cfg: dict[str, Any],
    defaults: dict[str, Any],
    method: str,
    choices: dict[str, tuple[Any, ...]] | None = None,
) -> dict[str, Any]:
    """Defaults merged with cfg; an unknown key, or a value outside its `choices`, is an error
    naming it (no silent typos)."""
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(
            f"method_options.{method}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(defaults))}"
        )
    opts = {**defaults, **cfg}
    for key, allowed in (choices or {}).items():
        if opts[key] not in allowed:
            raise ConfigError(
                f"method_options.{method}.{key}: {opts[key]!r} is not one of "
                f"{', '.join(map(str, allowed))}"
            )
    return opts


def smoothable(model: RestorerBundle, plan: BitPlan) -> list[str]:
    """Quantized Linear/Conv2d sites with an ungrouped weight (channel scaling is exact there)."""
    sites = model.quant_targets()
    return [
        n
        for n in plan
        if sites[n] != "matmul" and getattr(model.get_submodule(n), "groups", 1) == 1
    ]
