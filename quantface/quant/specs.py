"""What a quantization site is: its kind, its quantizer specs, its input transforms (plain data).

A *layout* maps site names to `LayerQuant`. It is saved in every checkpoint, so a quantized model
is rebuilt exactly on load: the layout says which parts exist (`wrap.wrap_model` creates them with
identity values), the state dict holds their values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantface.quant.quantizer import QuantSpec

MATMUL_SITES = ("qk_matmul", "av_matmul")


@dataclass(frozen=True)
class InputTransform:
    """Which run-time input transforms a Linear/Conv2d site carries (plain data)."""

    scale: bool = False  # divide input channel j by a saved s_j
    hadamard: bool = False  # online randomized Hadamard over the input channels
    lowrank: int = 0  # rank of the 16-bit low-rank branch (0: none)
    shift: bool = False  # subtract a saved d_j from input channel j (before the division)
    inner: int = 0  # matmul sites: length of the contraction-dim scale (0: none)

    @property
    def active(self) -> bool:
        return self.scale or self.hadamard or self.lowrank > 0 or self.shift or self.inner > 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "scale": self.scale,
            "hadamard": self.hadamard,
            "lowrank": self.lowrank,
        }
        if self.shift:  # only when used: layouts written before shifts existed stay identical
            d["shift"] = True
        if self.inner:
            d["inner"] = self.inner
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> InputTransform:
        return cls(**(d or {}))


@dataclass(frozen=True)
class LayerQuant:
    """Quantizer specs of one site. For a matmul, `w` is the second operand's spec."""

    kind: str  # "linear" | "conv2d" | "matmul"
    a: QuantSpec
    w: QuantSpec
    transform: InputTransform = InputTransform()
    split: int = 0  # >0: input channels [:split] and [split:] are quantized separately

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "a": self.a.to_dict(), "w": self.w.to_dict()}
        if self.transform.active:
            d["transform"] = self.transform.to_dict()
        if self.split:
            d["split"] = self.split
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerQuant:
        return cls(
            d["kind"],
            QuantSpec.from_dict(d["a"]),
            QuantSpec.from_dict(d["w"]),
            InputTransform.from_dict(d.get("transform")),
            int(d.get("split", 0)),
        )
