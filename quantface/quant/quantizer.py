"""Uniform affine fake quantization with straight-through gradients.

Every method in the suite quantizes through this one module, so a W4A4 row means the same integer
grid whatever the method: values are mapped to `clamp(round(x/Δ) + z, qmin, qmax)` and back to
float (simulated, "fake" quantization in FP32). Real packed integers live in `pack.py`.

Granularity says which elements share one (Δ, z):
  tensor  - one pair for the whole tensor
  channel - one pair per index along `channel_dim` (weights: output channels)
  token   - one pair per row, reducing over `channel_dim` (dynamic per-token activations)
  group   - one pair per `group_size` consecutive elements along `channel_dim`
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

Granularity = Literal["tensor", "channel", "token", "group"]
_EPS = 1e-8


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized; plain data so it round-trips through JSON and checkpoints."""

    bits: int
    symmetric: bool = False
    granularity: Granularity = "tensor"
    group_size: int = 64
    dynamic: bool = False
    channel_dim: int = 0
    clip_ratio: float = 1.0  # dynamic only: the range found in x is shrunk by this factor (QuaRot)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {self.bits}")
        if self.granularity not in ("tensor", "channel", "token", "group"):
            raise ValueError(f"unknown granularity {self.granularity!r}")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1], got {self.clip_ratio}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantSpec:
        return cls(**d)


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize to the integer grid and back; gradients flow to x (STE) and to scale (LSQ-style).

    Without autograd (restoring, calibrating, measuring) the same ops run in place on one new
    tensor (12 -> 3.3 ms for an (8, 32, 128, 128) x on one CPU thread, benchmarks/allocator.py),
    with bit for bit the same values: round_ste's forward (round(v) - v) + v is exactly round(v)
    in floating point (the difference is exact and the sum is representable). Tracing keeps the
    functional form.
    """
    if not _needs_graph(x, scale, zero_point):
        return (
            x.div(scale).round_().add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
        )
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _needs_graph(*tensors: Tensor) -> bool:
    """True when autograd records these ops or an exporter traces them."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def qparams_from_range(xmin: Tensor, xmax: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """(Δ, z) covering [xmin, xmax]; the range always contains 0 so zero is exactly representable.

    Non-finite bounds are zeroed and a degenerate (constant) range gets a tiny positive step, so a
    constant channel or a stray NaN never yields a NaN or infinite scale.
    """
    xmin = torch.nan_to_num(xmin.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    xmax = torch.nan_to_num(xmax.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    xmin = torch.minimum(xmin, torch.zeros_like(xmin))
    xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    if spec.symmetric:
        absmax = torch.maximum(-xmin, xmax)
        scale = torch.clamp(absmax / spec.qmax, min=_EPS)
        zero = torch.zeros_like(scale)
    else:
        scale = torch.clamp((xmax - xmin) / (spec.qmax - spec.qmin), min=_EPS)
        zero = torch.clamp(torch.round(-xmin / scale) + spec.qmin, spec.qmin, spec.qmax)
    return scale, zero


def to_groups(x: Tensor, spec: QuantSpec) -> Tensor:
    """View x so that the last dim holds one quantization group (only for 'group')."""
    dim = spec.channel_dim % x.dim()
    x = x.movedim(dim, x.dim() - 1)  # non-negative: ONNX export writes the index as given
    c = x.shape[-1]
    if c % spec.group_size:
        raise ValueError(f"group size {spec.group_size} does not divide {c} channels")
    return x.reshape(*x.shape[:-1], c // spec.group_size, spec.group_size)


def from_groups(xg: Tensor, like_shape: torch.Size, spec: QuantSpec) -> Tensor:
    dim = spec.channel_dim % len(like_shape)
    moved = list(like_shape)
    moved.append(moved.pop(dim))
    return xg.reshape(moved).movedim(len(moved) - 1, dim)


def reduce_range(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Min and max of x per quantization unit, shaped to broadcast against x (or its group view)."""
    x = x.detach()
    if spec.granularity == "tensor":
        return x.min().reshape(()), x.max().reshape(())
    dim = spec.channel_dim % x.dim()
    if spec.granularity == "channel":
        dims = [d for d in range(x.dim()) if d != dim]
        return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    if spec.granularity == "token":
        return x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    xg = to_groups(x, spec)
    return xg.amin(dim=-1, keepdim=True), xg.amax(dim=-1, keepdim=True)


def quantize_tensor(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """Fake-quantize x with given params, handling the group view."""
    if spec.granularity == "group":
        xg = to_groups(x, spec)
        return from_groups(fake_quant(xg, scale, zero, spec.qmin, spec.qmax), x.shape, spec)
    return fake_quant(x, scale, zero, spec.qmin, spec.qmax)


class UniformQuantizer(nn.Module):
    """A fake quantizer with three modes.

    - ``quant``: quantize (static params from calibration, or dynamic params from x itself);
    - ``observe``: pass x through unchanged and feed it to ``self.observer`` (calibration);
    - ``off``: pass through (full precision), used to measure one layer at a time.

    Static params are buffers, so a saved model carries its frozen quantizers.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode = "quant"
        self.observer: Any = None
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0))

    @property
    def calibrated(self) -> bool:
        return self.spec.dynamic or self.scale.numel() > 0

    def set_range(self, xmin: Tensor, xmax: Tensor) -> None:
        self.scale, self.zero_point = qparams_from_range(xmin, xmax, self.spec)

    def clip_range(self) -> tuple[Tensor, Tensor]:
        """The [xmin, xmax] the current static parameters cover (inverse of `set_range`)."""
        s, z = self.scale, self.zero_point
        if self.spec.symmetric:
            return -self.spec.qmax * s, self.spec.qmax * s
        return (self.spec.qmin - z) * s, (self.spec.qmax - z) * s

    def set_bits(self, bits: int) -> None:
        """Change the bit-width, keeping the calibrated clipping range (mixed-precision search)."""
        if bits == self.spec.bits:
            return
        rng = self.clip_range() if self.scale.numel() and not self.spec.dynamic else None
        self.spec = replace(self.spec, bits=bits)
        if rng is not None:
            self.set_range(*rng)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if self.observer is not None:
                self.observer.update(x)
            return x
        if self.spec.dynamic:
            lo, hi = reduce_range(x, self.spec)
            if self.spec.clip_ratio != 1.0:
                lo, hi = lo * self.spec.clip_ratio, hi * self.spec.clip_ratio
            scale, zero = qparams_from_range(lo, hi, self.spec)
            return quantize_tensor(x, scale.to(x.dtype), zero.to(x.dtype), self.spec)
        if not self.calibrated:
            raise RuntimeError("static quantizer used before calibration (no scale set)")
        return quantize_tensor(x, self.scale, self.zero_point, self.spec)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Calibrated shapes are only known after calibration: adopt the saved shapes on load.
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"bits={s.bits}, {'sym' if s.symmetric else 'asym'}, {s.granularity}, "
            f"{'dynamic' if s.dynamic else 'static'}, mode={self.mode}"
        )


def act_spec(bits: int, kind: str, granularity: str, symmetric: bool, **kw: Any) -> QuantSpec:
    """An activation spec: per-tensor static, or dynamic per token/pixel (channel_dim by kind)."""
    dynamic = granularity != "tensor"
    dim = 1 if kind == "conv2d" else -1
    return QuantSpec(bits, symmetric, granularity, dynamic=dynamic, channel_dim=dim, **kw)
