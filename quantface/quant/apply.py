"""Shared steps of applying a quantization recipe: layouts from a plan, and range setting.

Methods differ in transforms and optimisation, not in these mechanics; keeping them here means a
W4A4 weight quantizer is set up the same way in every method unless its paper says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from quantface.quant.calibration import CalibrationSet
from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.observers import MinMaxObserver, make_observer
from quantface.quant.plan import BitPlan, LayerBits
from quantface.quant.specs import LayerQuant
from quantface.quant.target import QuantTarget
from quantface.quant.wrap import quantizers
from quantface.timing import timed


def current_layout(model: nn.Module) -> dict[str, LayerQuant]:
    """The layout a wrapped model carries (derived from its modules, never stored twice)."""
    layout = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLayerMixin):
            kind = "linear" if isinstance(mod, nn.Linear) else "conv2d"
            t = mod.transform_spec()
        elif isinstance(mod, QuantMatMul):
            kind, t = "matmul", mod.transform_spec()
        else:
            continue
        split = getattr(mod, "split", 0)
        layout[name] = LayerQuant(kind, mod.act_quantizer.spec, mod.weight_quantizer.spec, t, split)
    return layout


def plan_of(model: nn.Module, notes: Mapping[str, str] | None = None) -> BitPlan:
    """The bits the model actually runs at (matmuls: both operands at their activation bits)."""
    return BitPlan(
        {n: LayerBits(lq.w.bits, lq.a.bits) for n, lq in current_layout(model).items()}, notes
    )


def calibrate_weights(model: nn.Module, observer: str = "minmax", **kwargs) -> None:
    """Set every weight quantizer's range from its own weight tensor (split: from its half)."""
    with timed(f"weight_ranges_{observer}"):
        _calibrate_weights(model, observer, **kwargs)


def _calibrate_weights(model: nn.Module, observer: str, **kwargs) -> None:
    for mod in model.modules():
        if isinstance(mod, QuantLayerMixin):
            parts = [(mod.weight_quantizer, mod.weight)]
            if mod.split:
                w = mod.weight
                parts = [(mod.weight_quantizer, w[:, : mod.split])]
                parts.append((mod.weight_quantizer_1, w[:, mod.split :]))
            for q, w in parts:
                obs = make_observer(observer, q.spec, **kwargs)
                obs.update(w)
                q.set_range(*obs.compute())


def set_activation_ranges(
    model: QuantTarget, calib: CalibrationSet, observer: str = "minmax", **kwargs
) -> None:
    """Static activation ranges from the cached FP statistics (no forward pass needed).

    minmax uses the exact calibration-set extremes; percentile/mse search the cached row sample.
    Dynamic quantizers need nothing.
    """
    for qname, q in quantizers(model).items():
        site, _, qattr = qname.rpartition(".")
        mod = model.get_submodule(site)
        is_weight = qattr.startswith("weight_quantizer")
        if q.spec.dynamic or (isinstance(mod, QuantLayerMixin) and is_weight):
            continue
        if isinstance(mod, QuantMatMul):
            operand = "a" if qattr == "act_quantizer" else "b"
        else:
            operand = "input"
        stats = calib.input_stats(site, operand)
        if isinstance(mod, QuantLayerMixin) and mod.split:
            stats = _split_stats(stats, mod.split, qattr == "act_quantizer_1")
        if observer == "minmax" and q.spec.granularity == "tensor":
            q.set_range(stats["min"], stats["max"])
            continue
        if q.spec.granularity != "tensor":
            raise ValueError(
                f"{qname}: static activation ranges are per tensor; use dynamic for "
                f"per-{q.spec.granularity} activations"
            )
        obs = make_observer(observer, q.spec, **kwargs)
        obs.update(stats["rows"])
        q.set_range(*obs.compute())


def _split_stats(
    stats: dict[str, torch.Tensor], split: int, second: bool
) -> dict[str, torch.Tensor]:
    """The statistics of one half of a split layer's input channels."""
    part = slice(split, None) if second else slice(0, split)
    lo, hi = stats["ch_min"][part], stats["ch_max"][part]
    return {
        "min": lo.min(),
        "max": hi.max(),
        "ch_min": lo,
        "ch_max": hi,
        "rows": stats["rows"][:, part],
    }


def _is_weight_quantizer(model: nn.Module, qname: str) -> bool:
    site, _, qattr = qname.rpartition(".")
    return qattr.startswith("weight_quantizer") and isinstance(
        model.get_submodule(site), QuantLayerMixin
    )


@torch.no_grad()
def observe_activation_ranges(
    model: QuantTarget,
    images: torch.Tensor,
    batch_size: int = 8,
    observer: str = "minmax",
    **kwargs,
):
    """Static min-max activation ranges measured on the *transformed* FP model.

    The cached calibration statistics describe the original model's activations; once a method
    has folded scales into norms or rotated values (to_v rows), the inputs some quantizers see
    differ, so their ranges are re-observed here by one FP forward over the calibration images
    (weights unquantized, every static activation quantizer observing). Dynamic ones need nothing:
    with no static activation quantizer the forwards would set nothing, so none runs.
    `observer` "mse" runs the Lp clip search on the real activations (extremes included), which
    the cached row sample cannot do: a uniform row sample rarely holds the outliers.
    """
    qs = quantizers(model)
    act = {n: q for n, q in qs.items() if not _is_weight_quantizer(model, n)}
    static = {n: q for n, q in act.items() if not q.spec.dynamic}
    if not static:
        return
    modes = {n: q.mode for n, q in qs.items()}
    try:
        for n, q in qs.items():
            q.mode = "off"
        for q in static.values():
            q.mode = "observe"
            q.observer = (
                MinMaxObserver(q.spec)
                if observer == "minmax"
                else make_observer(observer, q.spec, **kwargs)
            )
        with timed("observe_ranges_image", len(images)):
            for start in range(0, len(images), batch_size):
                model.restore(images[start : start + batch_size])
        with timed("observe_ranges_search"):
            for q in static.values():
                q.set_range(*q.observer.compute())
    finally:
        for n, q in qs.items():
            q.mode, q.observer = modes[n], None
