"""QuantScheme: the quantizers a method runs with, apart from its algorithm.

Why: methods differ in their quantizers as well as their algorithms (per-tensor static vs
per-token dynamic activations alone moves PSNR-FP at A4 by several dB). Every method declares
its paper's quantizers as a `QuantScheme` (its *native* scheme) and builds its layout from a
scheme through `QuantScheme.layout`, so the controlled-comparison protocol can hand every method
one and the same scheme (`matched`): rows then differ only in the methods' own algorithms
(transforms, branches, reconstruction, distillation), which stay as they are.

What a scheme fixes:
- weights: symmetric or not; per output channel, or per group of `group_size` input channels
  (the largest divisor of C_in up to it; a group spanning all inputs is per output channel);
  the initial range rule (`minmax`, or `mse`: the per-channel Lp-2.4 clip search);
- activations: symmetric or not; `tensor` (static: one range from the calibration set), `token`
  (dynamic: each token's range at run time) or `group` (dynamic per group of input channels);
  the initial rule of static ranges (`minmax` or `mse`); a clip ratio for dynamic ranges;
- attention QK^T and AV: both operands as activations (per tensor, or per token: K^T per key
  token, i.e. a column; `group` uses per token there);
- `exceptions`: whether the method's own higher-precision layers apply (PassionSR's and
  EfficientDM's 8-bit layers, Q-Diffusion's softmax at 16 bit). The matched protocol turns them
  off, so every site runs at the setting's bits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from quantface.errors import ConfigError

if TYPE_CHECKING:  # the config check builds schemes without torch: specs are imported on use
    from torch import nn

    from quantface.quant.plan import BitPlan
    from quantface.quant.quantizer import QuantSpec
    from quantface.quant.specs import InputTransform, LayerQuant

CHOICES: dict[str, tuple[Any, ...]] = {
    "weight_granularity": ("channel", "group"),
    "weight_init": ("minmax", "mse"),
    "act_granularity": ("tensor", "token", "group"),
    "act_init": ("minmax", "mse"),
}


@dataclass(frozen=True)
class QuantScheme:
    """Weight and activation quantizers of every quantized site (see the module docstring)."""

    weight_symmetric: bool = False
    weight_granularity: Literal["channel", "group"] = "channel"
    weight_init: Literal["minmax", "mse"] = "minmax"
    act_symmetric: bool = False
    act_granularity: Literal["tensor", "token", "group"] = "tensor"
    act_init: Literal["minmax", "mse"] = "minmax"
    act_clip_ratio: float = 1.0
    group_size: int = 64
    exceptions: bool = True

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"quantizer scheme: {key} {getattr(self, key)!r} is not one of "
                    f"{', '.join(allowed)}"
                )
        for key in ("weight_symmetric", "act_symmetric", "exceptions"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"quantizer scheme: {key} must be true or false")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError("quantizer scheme: group_size must be a positive integer")
        if not 0.0 < float(self.act_clip_ratio) <= 1.0:
            raise ConfigError("quantizer scheme: act_clip_ratio must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "quantizer scheme") -> QuantScheme:
        """A scheme from config keys; an unknown key is an error naming it and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**d)
        except ConfigError as e:  # name where the keys came from
            raise ConfigError(str(e).replace("quantizer scheme", where, 1)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def act_dynamic(self) -> bool:
        return self.act_granularity != "tensor"

    def act_spec(self, bits: int, kind: str, c_in: int) -> QuantSpec:
        """The input quantizer of a Linear/Conv2d (channel dim: 1 for a conv, last for a Linear)."""
        from quantface.quant.quantizer import QuantSpec

        dim = 1 if kind == "conv2d" else -1
        kw = {"dynamic": self.act_dynamic, "channel_dim": dim}
        if self.act_dynamic:
            kw["clip_ratio"] = self.act_clip_ratio
        if self.act_granularity == "group":
            return _grouped(bits, c_in, self.group_size, self.act_symmetric, "token", **kw)
        return QuantSpec(bits, self.act_symmetric, self.act_granularity, **kw)

    def weight_spec(self, bits: int, c_in: int) -> QuantSpec:
        """The weight quantizer of a Linear/Conv2d (per output channel, or per input group)."""
        from quantface.quant.quantizer import QuantSpec

        if self.weight_granularity == "group":
            w = _grouped(
                bits, c_in, self.group_size, self.weight_symmetric, "channel", channel_dim=1
            )
            if w.granularity != "channel":
                return w
        return QuantSpec(bits, self.weight_symmetric, "channel", channel_dim=0)

    def matmul_specs(self, bits: int, name: str) -> tuple[QuantSpec, QuantSpec]:
        """Both operands of an attention matmul: per tensor (static), or per token (dynamic:
        Q, V and the softmax output per row; K^T [B*h, d, M] per key token, a column)."""
        from quantface.quant.quantizer import QuantSpec

        if not self.act_dynamic:
            a = QuantSpec(bits, self.act_symmetric, "tensor", channel_dim=-1)
            return a, a
        a = QuantSpec(
            bits,
            self.act_symmetric,
            "token",
            dynamic=True,
            channel_dim=-1,
            clip_ratio=self.act_clip_ratio,
        )
        b_dim = -2 if name.endswith("qk_matmul") else -1
        return a, dataclasses.replace(a, channel_dim=b_dim)

    def layout(
        self,
        model: nn.Module,
        sites: Mapping[str, str],
        plan: BitPlan,
        transforms: Mapping[str, InputTransform] | None = None,
        splits: Mapping[str, int] | None = None,
    ) -> dict[str, LayerQuant]:
        """Every planned site's quantizers; sites missing from the plan stay full precision.
        `transforms` and `splits` carry a method's run-time transforms and split inputs."""
        from quantface.quant.specs import InputTransform, LayerQuant

        transforms, splits = transforms or {}, splits or {}
        layout = {}
        for name, bits in plan.items():
            kind = sites[name]
            if kind == "matmul":
                a, b = self.matmul_specs(bits.a_bits, name)
                layout[name] = LayerQuant(kind, a, b, transforms.get(name, InputTransform()))
                continue
            c_in = model.get_submodule(name).weight.shape[1]
            layout[name] = LayerQuant(
                kind,
                self.act_spec(bits.a_bits, kind, c_in),
                self.weight_spec(bits.w_bits, c_in),
                transforms.get(name, InputTransform()),
                splits.get(name, 0),
            )
        return layout

    def words(self) -> str:
        """E.g. 'W per-channel asym (min-max); A per-tensor static asym (min-max)'."""
        init = {"minmax": "min-max", "mse": "Lp-2.4 search"}
        w_grain = (
            f"per-group({self.group_size})" if self.weight_granularity == "group" else "per-channel"
        )
        w = f"{w_grain} {'sym' if self.weight_symmetric else 'asym'} ({init[self.weight_init]})"
        if self.act_dynamic:
            grain = (
                f"per-group({self.group_size})" if self.act_granularity == "group" else "per-token"
            )
            a = f"{grain} dynamic {'sym' if self.act_symmetric else 'asym'}"
        else:
            a = (
                f"per-tensor static {'sym' if self.act_symmetric else 'asym'} "
                f"({init[self.act_init]})"
            )
        extra = "" if self.exceptions else "; no exceptions"
        return f"W {w}; A {a}{extra}"


def _grouped(
    bits: int, channels: int, group: int, symmetric: bool, whole: str, **kw: Any
) -> QuantSpec:
    """Groups of the largest divisor of `channels` <= group; one group spanning all channels is
    `whole` granularity (per token for activations, per output channel for weights)."""
    from quantface.quant.quantizer import QuantSpec

    g = max(d for d in range(1, min(group, channels) + 1) if channels % d == 0)
    if g == channels:
        return QuantSpec(bits, symmetric, whole, **kw)
    return QuantSpec(bits, symmetric, "group", group_size=g, **kw)
