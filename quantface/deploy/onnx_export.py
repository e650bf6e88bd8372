"""Export a (quantized) restorer to ONNX with the integer operators ONNX Runtime's CPU EP runs.

The whole one-step restore path is one graph, `lq` [B, 3, S, S] in [0, 1] -> `restored`: the FP
visual-prompt embedder, the VAE encoder, one UNet evaluation at t and the VAE decoder. Export goes
through torch.onnx's TorchScript exporter (`dynamo=False`: the dynamo exporter needs onnxscript,
and its translation of custom ops is not what decides integer fusion anyway). During the export
every quantization site's quantized product is an `autograd.Function` whose `symbolic` writes the
ONNX nodes by hand, while its `forward` computes the fake-quant value, so tracing continues on the
very numbers the simulation produces. Transforms a method adds stay real graph nodes: the shift
and smoothing division as Sub/Div by constants, an online Hadamard as a constant MatMul (a Linear)
or a 1x1 Conv (a conv, over its channels), a low-rank branch as FP32 MatMul/Conv nodes (its
weights are FP16-rounded values), a matmul's contraction-dim scale as a Mul.

What each site becomes (integers are uint8 codes, weights per output channel):

- Linear, static per-tensor activations (MaxMin, SmoothQuant, Q-Diffusion, PassionSR,
  EfficientDM): QuantizeLinear, `MatMulInteger` with the per-channel weight zero points, Cast,
  Mul by s_x s_w, Add bias. Not QDQ pairs: ORT 1.32 turned a QDQ MatMul followed by its bias Add
  into a float Gemm for about half the Linears (measured), so the integer GEMM is written out;
- Conv2d, static per-tensor activations: ORT has no fusion for a QDQ Conv whose output is not
  re-quantized (the fake-quant model never re-quantizes a conv's output; adding a Q there would
  change the numbers), so the integer conv is written out: QuantizeLinear, `ConvInteger` (it pads
  with the zero point, i.e. with an exact 0), Cast, Mul by s_x s_w per channel, Add bias.
  Codes are uint8 on both sides (signed grids shifted: the same integers): ORT's ConvInteger ran
  4.6x slower with int8 weights on this CPU.
  ORT's ConvInteger takes one weight zero point only: per-channel zero points z_o (asymmetric
  weights) are applied as `P - z_o * ConvInteger(x_q, ones)`, one extra single-channel conv;
- attention QK^T / AV, both operands static per tensor: QuantizeLinear on both, `MatMulInteger`,
  Cast, Mul by s_a s_b;
- Linear (and 1x1 conv) with dynamic per-token activations (QuaRot, SVDQuant, QuantFace): each
  token's range is computed in float (ReduceMin/ReduceMax, the clip ratio), its codes by
  Div/Round/Clip and a Cast to uint8 (DynamicQuantizeLinear is per tensor only, a different
  quantizer), then `MatMulInteger` with the per-channel weight zero points; each row's scale (and
  for asymmetric tokens its zero point, through the weights' column sums) is applied to the int32
  result;
- everything else runs in float as the simulation computes it (fake quantization written as
  Round/Clip nodes, the weight a dequantized FP32 constant): per-pixel dynamic activations of a
  k x k conv (the pixels a conv mixes have different scales: no integer form), per-group
  quantizers, Q-Diffusion's split shortcut layers, per-token attention operands, and any site
  above 8 bits (Q-Diffusion's 16-bit softmax). `site_paths` says which path each site took.

The timestep is a constant of the graph, so the layers of the time embedding (and each resnet's
time projection) read constants only: ORT folds them at load, whatever path they took.

The `qdq` flavour writes the same static sites as QuantizeLinear/DequantizeLinear pairs on
the activation and DequantizeLinear on the weight codes in front of a float Conv/MatMul: the
layout TensorRT imports and fuses into its int8 kernels, symmetric grids as int8 with zero point
0 (TensorRT has no zero points: an asymmetric site stays uint8 with its zero point, which
TensorRT rejects). Per-token sites have no QDQ form and run in float there. ORT runs that flavour
too, but its CPU EP leaves most of it in float (it fuses DQ->Conv only before a Q).

Bits below 8 use the same 8-bit kernels: ORT's CPU EP has no 4-bit activation kernel and no 4-bit
conv, so 4-bit weights are stored as uint8 codes in [0, 15] and 4-bit activations are clipped to
their 16 codes before an 8-bit QuantizeLinear; the integers, hence the outputs, are exactly the
4-bit ones, the speed is the 8-bit kernels'.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantface.io import atomic_path
from quantface.models.base import RestorerBundle
from quantface.quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear, QuantMatMul
from quantface.quant.pack import weight_codes
from quantface.quant.quantizer import _EPS, UniformQuantizer, from_groups, to_groups
from quantface.quant.transforms import HADAMARD, INNER, transforms_of

OPSET = 17
# protobuf caps a message at 2 GB: larger models keep their tensors in a data file
EXTERNAL_ABOVE = 2**31 - 1
INPUT, OUTPUT = "lq", "restored"

# paths a site can take (site_paths values)
INT_LINEAR = "int8 MatMulInteger"
INT_CONV = "int8 ConvInteger"
INT_ATTN = "int8 MatMulInteger (both operands)"
INT_TOKEN = "int8 MatMulInteger, per-token scales in float"
FLOAT = "float (fake-quant nodes, FP32 kernel)"
QDQ = "QDQ pair (QuantizeLinear/DequantizeLinear) -> float op"
FLAVORS = ("ort", "qdq")

_FLOAT_T = 1  # onnx.TensorProto.FLOAT
_UINT8_T = 2


def _core(site: _Site, flavor: str) -> Any:
    """`site`'s product for tracing: evaluated as the fake-quant value, exported as the site's
    hand-written ONNX nodes. The value is computed outside the Function and passed in (the
    TorchScript tracer cannot follow tensors a Function's forward makes from anything but its
    inputs); the exporter then drops those reference nodes, which nothing reads."""

    class Core(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *xs: Tensor) -> Tensor:  # type: ignore[override]
            return xs[-1].clone()

        @staticmethod
        def symbolic(g: Any, *xs: Any) -> Any:
            emit = site.emit_qdq if flavor == "qdq" else site.emit
            return emit(g, *xs[:-1])

    def apply(*xs: Tensor) -> Tensor:
        return Core.apply(*xs, site.reference(*xs))

    return apply


def _c(g: Any, value: Tensor | float, dtype: torch.dtype = torch.float32) -> Any:
    return g.op("Constant", value_t=torch.as_tensor(value, dtype=dtype))


# --- quantizer parameters as engine integers -----------------------------------------------------
@dataclass(frozen=True)
class _ActQ:
    """A static per-tensor activation quantizer as uint8 QuantizeLinear parameters.

    Codes c in [qmin, qmax] with zero z become u = c - qmin in [0, top] with zero z - qmin: the
    same grid, so signed (symmetric) activations run through the same uint8 kernels.
    """

    scale: float
    zero: int  # in uint8 code space
    top: int  # largest code: 2^bits - 1

    @classmethod
    def of(cls, q: UniformQuantizer) -> _ActQ | None:
        s = q.spec
        if s.dynamic or s.granularity != "tensor" or s.bits > 8 or q.scale.numel() != 1:
            return None
        z = float(q.zero_point.reshape(-1)[0]) if q.zero_point.numel() else 0.0
        if z != round(z):
            return None
        return cls(float(q.scale.reshape(-1)[0]), int(z) - s.qmin, s.qmax - s.qmin)

    def emit(self, g: Any, x: Any) -> Any:
        scale = _c(g, self.scale)
        zero = _c(g, self.zero, torch.uint8)
        if self.top < 255:  # a sub-8-bit grid: clip to its codes before the 8-bit quantizer
            lo, hi = -self.zero * self.scale, (self.top - self.zero) * self.scale
            x = g.op("Clip", x, _c(g, lo), _c(g, hi))
        return g.op("QuantizeLinear", x, scale, zero)

    def emit_qdq(self, g: Any, x: Any) -> Any:
        """QuantizeLinear -> DequantizeLinear; a symmetric grid (zero in the middle) as int8
        with zero point 0, the form TensorRT imports, an asymmetric one as uint8."""
        signed = self.zero == (self.top + 1) // 2
        zero = _c(g, 0, torch.int8) if signed else _c(g, self.zero, torch.uint8)
        if self.top < 255:
            lo, hi = -self.zero * self.scale, (self.top - self.zero) * self.scale
            x = g.op("Clip", x, _c(g, lo), _c(g, hi))
        q = g.op("QuantizeLinear", x, _c(g, self.scale), zero)
        return g.op("DequantizeLinear", q, _c(g, self.scale), zero)


@dataclass(frozen=True)
class _WeightQ:
    """Per-output-channel weight codes as uint8 with per-channel zero points and scales."""

    codes: Tensor  # uint8, the weight's shape
    zero: Tensor  # uint8 [O]
    scale: Tensor  # float32 [O]

    @classmethod
    def of(cls, q: UniformQuantizer, w: Tensor) -> _WeightQ | None:
        s = q.spec
        if s.dynamic or s.granularity != "channel" or s.channel_dim != 0 or s.bits > 8:
            return None
        z = q.zero_point.reshape(-1).float()
        if not torch.equal(z, z.round()):
            return None
        codes = weight_codes(q, w.detach().float()) - s.qmin
        o = w.shape[0]
        return cls(
            codes.to(torch.uint8),
            (z - s.qmin).to(torch.uint8).expand(o).clone(),
            q.scale.detach().reshape(-1).float().expand(o).clone(),
        )


def _weight_dq(g: Any, wq: _WeightQ, transpose: bool) -> Any:
    """DequantizeLinear of the weight codes (per output channel); symmetric weights (one zero
    point in the middle of the grid) as int8 with zero point 0, as TensorRT needs."""
    codes = wq.codes.reshape(wq.codes.shape[0], -1).t().contiguous() if transpose else wq.codes
    axis = 1 if transpose else 0
    z = int(wq.zero[0])
    if bool((wq.zero == z).all()) and z in (8, 128):  # 4/8-bit symmetric: shift to signed
        signed = (codes.to(torch.int16) - z).to(torch.int8)
        zero = torch.zeros(wq.zero.shape, dtype=torch.int8)
        return g.op(
            "DequantizeLinear",
            _c(g, signed, torch.int8),
            _c(g, wq.scale),
            _c(g, zero, torch.int8),
            axis_i=axis,
        )
    return g.op(
        "DequantizeLinear",
        _c(g, codes, torch.uint8),
        _c(g, wq.scale),
        _c(g, wq.zero, torch.uint8),
        axis_i=axis,
    )


# --- sites -------------------------------------------------------------------------------------
class _Site:
    """One quantized module's integer form and `reference`, its fake-quant product."""

    path: str

    def reference(self, *args: Tensor) -> Tensor:
        raise NotImplementedError

    def emit(self, g: Any, *args: Any) -> Any:
        raise NotImplementedError


class _LinearSite(_Site):
    """Static per-tensor activations: QuantizeLinear, MatMulInteger, per-channel rescale."""

    path = INT_LINEAR

    def __init__(self, mod: QuantLinear, act: _ActQ, wq: _WeightQ) -> None:
        self.mod, self.act, self.wq = mod, act, wq
        self.w_hat = mod.quantized_weight().detach()

    def reference(self, x: Tensor) -> Tensor:
        m = self.mod
        return F.linear(m.act_quantizer.forward(x), self.w_hat, m.bias)

    def emit(self, g: Any, x: Any) -> Any:
        acc = g.op(
            "MatMulInteger",
            self.act.emit(g, x),
            _c(g, self.wq.codes.t().contiguous(), torch.uint8),
            _c(g, self.act.zero, torch.uint8),
            _c(g, self.wq.zero, torch.uint8),
        )
        y = g.op("Cast", acc, to_i=_FLOAT_T)
        y = g.op("Mul", y, _c(g, self.act.scale * self.wq.scale))
        return _add_bias(g, y, self.mod.bias, 1)

    def emit_qdq(self, g: Any, x: Any) -> Any:
        y = g.op("MatMul", self.act.emit_qdq(g, x), _weight_dq(g, self.wq, transpose=True))
        return _add_bias(g, y, self.mod.bias, 1)


class _ConvSite(_Site):
    """Static per-tensor activations: QuantizeLinear, ConvInteger, per-channel rescale."""

    path = INT_CONV

    def __init__(self, mod: QuantConv2d, act: _ActQ, wq: _WeightQ, pads: list[int]) -> None:
        self.mod, self.act, self.wq, self.pads = mod, act, wq, pads
        self.w_hat = mod.quantized_weight().detach()

    def reference(self, x: Tensor) -> Tensor:
        m = self.mod
        return m._conv_forward(m.act_quantizer.forward(x), self.w_hat, m.bias)

    def emit(self, g: Any, x: Any) -> Any:
        m, wq = self.mod, self.wq
        attrs = {
            "pads_i": self.pads,
            "strides_i": list(m.stride),
            "dilations_i": list(m.dilation),
            "group_i": m.groups,
        }
        xq = self.act.emit(g, x)
        x_zero = _c(g, self.act.zero, torch.uint8)
        uniform = bool((wq.zero == wq.zero[0]).all())
        w_zero = _c(g, int(wq.zero[0]) if uniform else 0, torch.uint8)
        acc = g.op("ConvInteger", xq, _c(g, wq.codes, torch.uint8), x_zero, w_zero, **attrs)
        if not uniform:  # sum (x - zx)(w - z_o) = sum (x - zx) w - z_o sum (x - zx)
            ones = torch.ones(1, *wq.codes.shape[1:], dtype=torch.uint8)
            window = g.op("ConvInteger", xq, _c(g, ones, torch.uint8), x_zero, **attrs)
            zeros = _c(g, wq.zero.to(torch.int32).view(1, -1, 1, 1), torch.int32)
            acc = g.op("Sub", acc, g.op("Mul", window, zeros))
        y = g.op("Cast", acc, to_i=_FLOAT_T)
        y = g.op("Mul", y, _c(g, (self.act.scale * wq.scale).view(1, -1, 1, 1)))
        return _add_bias(g, y, m.bias, 4)

    def emit_qdq(self, g: Any, x: Any) -> Any:
        m = self.mod
        inputs = [self.act.emit_qdq(g, x), _weight_dq(g, self.wq, transpose=False)]
        if m.bias is not None:
            inputs.append(_c(g, m.bias.detach().float()))
        return g.op(
            "Conv",
            *inputs,
            pads_i=self.pads,
            strides_i=list(m.stride),
            dilations_i=list(m.dilation),
            group_i=m.groups,
            kernel_shape_i=list(m.kernel_size),
        )


class _TokenSite(_Site):
    """Dynamic per-token activations (a Linear, or a 1x1 conv over its channels): the codes are
    computed in float per token, the product in integers by MatMulInteger."""

    path = INT_TOKEN

    def __init__(self, mod: QuantLayerMixin, wq: _WeightQ) -> None:
        self.mod, self.wq = mod, wq
        self.w_hat = mod.quantized_weight().detach()
        self.conv = isinstance(mod, nn.Conv2d)

    def reference(self, x: Tensor) -> Tensor:
        m = self.mod
        xq = m.act_quantizer.forward(x)
        if self.conv:
            return m._conv_forward(xq, self.w_hat, m.bias)
        return F.linear(xq, self.w_hat, m.bias)

    def emit(self, g: Any, x: Any) -> Any:
        spec = self.mod.act_quantizer.spec
        if self.conv:  # [B, C, H, W] -> [B, H, W, C]: each pixel is a token
            x = g.op("Transpose", x, perm_i=[0, 2, 3, 1])
        lo = g.op("ReduceMin", x, axes_i=[-1], keepdims_i=1)
        hi = g.op("ReduceMax", x, axes_i=[-1], keepdims_i=1)
        if spec.clip_ratio != 1.0:
            lo, hi = (
                g.op("Mul", lo, _c(g, spec.clip_ratio)),
                g.op("Mul", hi, _c(g, spec.clip_ratio)),
            )
        lo, hi = g.op("Min", lo, _c(g, 0.0)), g.op("Max", hi, _c(g, 0.0))
        qmin, qmax = float(spec.qmin), float(spec.qmax)
        if spec.symmetric:
            absmax = g.op("Max", g.op("Neg", lo), hi)
            scale = g.op("Max", g.op("Div", absmax, _c(g, qmax)), _c(g, _EPS))
            zero = None
            codes = g.op("Round", g.op("Div", x, scale))
        else:
            scale = g.op("Max", g.op("Div", g.op("Sub", hi, lo), _c(g, qmax - qmin)), _c(g, _EPS))
            zero = g.op("Round", g.op("Div", g.op("Neg", lo), scale))
            zero = g.op("Clip", g.op("Add", zero, _c(g, qmin)), _c(g, qmin), _c(g, qmax))
            codes = g.op("Add", g.op("Round", g.op("Div", x, scale)), zero)
        codes = g.op("Sub", g.op("Clip", codes, _c(g, qmin), _c(g, qmax)), _c(g, qmin))
        wq = self.wq
        w2 = wq.codes.reshape(wq.codes.shape[0], -1).t().contiguous()  # [K, N]
        acc = g.op(
            "MatMulInteger",
            g.op("Cast", codes, to_i=_UINT8_T),
            _c(g, w2, torch.uint8),
            _c(g, -spec.qmin if zero is None else 0, torch.uint8),
            _c(g, wq.zero, torch.uint8),
        )
        y = g.op("Cast", acc, to_i=_FLOAT_T)
        if zero is not None:  # sum (u - z_r)(w - z_n) = acc - z_r colsum(w - z_n), z_r in u's space
            colsum = (w2.float() - wq.zero.float()).sum(0)
            z_u = g.op("Sub", zero, _c(g, qmin))
            y = g.op("Sub", y, g.op("Mul", z_u, _c(g, colsum)))
        y = g.op("Mul", g.op("Mul", y, scale), _c(g, wq.scale))
        y = _add_bias(g, y, self.mod.bias, 1)
        if self.conv:
            y = g.op("Transpose", y, perm_i=[0, 3, 1, 2])
        return y


class _AttnSite(_Site):
    """Both operands static per tensor: QuantizeLinear twice, MatMulInteger, rescale."""

    path = INT_ATTN

    def __init__(self, mod: QuantMatMul, a: _ActQ, b: _ActQ) -> None:
        self.mod, self.a, self.b = mod, a, b

    def reference(self, a: Tensor, b: Tensor) -> Tensor:
        m = self.mod
        return torch.bmm(m.act_quantizer.forward(a), m.weight_quantizer.forward(b))

    def emit(self, g: Any, a: Any, b: Any) -> Any:
        acc = g.op(
            "MatMulInteger",
            self.a.emit(g, a),
            self.b.emit(g, b),
            _c(g, self.a.zero, torch.uint8),
            _c(g, self.b.zero, torch.uint8),
        )
        return g.op("Mul", g.op("Cast", acc, to_i=_FLOAT_T), _c(g, self.a.scale * self.b.scale))

    def emit_qdq(self, g: Any, a: Any, b: Any) -> Any:
        return g.op("MatMul", self.a.emit_qdq(g, a), self.b.emit_qdq(g, b))


def _add_bias(g: Any, y: Any, bias: Tensor | None, ndim: int) -> Any:
    if bias is None:
        return y
    shape = [-1] if ndim == 1 else [1, -1, 1, 1]
    return g.op("Add", y, _c(g, bias.detach().float().reshape(shape)))


def _conv_pads(conv: nn.Conv2d) -> list[int] | None:
    """ONNX pads [top, left, bottom, right] of a zero-padded conv with numeric padding."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    ph, pw = conv.padding
    return [ph, pw, ph, pw]


def plan_site(mod: nn.Module) -> _Site | None:
    """The integer form of one quantized module, or None: it runs in float (module docstring)."""
    if isinstance(mod, QuantMatMul):
        a, b = _ActQ.of(mod.act_quantizer), _ActQ.of(mod.weight_quantizer)
        return _AttnSite(mod, a, b) if a and b else None
    if not isinstance(mod, QuantLinear | QuantConv2d) or mod.split:  # split halves: float
        return None
    wq = _WeightQ.of(mod.weight_quantizer, mod.weight)
    if wq is None:
        return None
    act = _ActQ.of(mod.act_quantizer)
    spec = mod.act_quantizer.spec
    token = spec.dynamic and spec.granularity == "token" and spec.bits <= 8
    if isinstance(mod, QuantLinear):
        if act is not None:
            return _LinearSite(mod, act, wq)
        return _TokenSite(mod, wq) if token else None
    pads = _conv_pads(mod)
    one_zero = bool((wq.zero == wq.zero[0]).all())
    if act is not None and pads is not None and (mod.groups == 1 or one_zero):
        return _ConvSite(mod, act, wq, pads)  # (the zero-point correction is one ungrouped conv)
    pointwise = mod.kernel_size == (1, 1) and mod.stride == (1, 1) and mod.groups == 1
    if token and pointwise and pads == [0, 0, 0, 0]:
        return _TokenSite(mod, wq)
    return None


# --- the module-level forward of a site during export -------------------------------------------
def _transform(mod: QuantLayerMixin, had: Tensor | None) -> Any:
    """`transform_input` with the Hadamard `had` (computed before tracing) as an explicit
    constant product: a MatMul for a Linear, a 1x1 Conv over the channels for a conv."""

    def transform(x: Tensor) -> Tensor:
        for t in transforms_of(mod):
            if t is not HADAMARD:
                x = t.on_input(mod, x)
            elif isinstance(mod, nn.Conv2d):
                x = F.conv2d(x, had.t()[:, :, None, None])
            else:
                x = x @ had
        return x

    return transform


def _fake_quant(q: UniformQuantizer, x: Tensor) -> Tensor:
    """`q(x)` as the float nodes of a site without an integer form. A dynamic quantizer is
    written lean (ReduceMin/ReduceMax, the step, Round, Clip): the simulation's guards against
    NaN/Inf ranges would add a dozen IsNaN/IsInf/Where nodes per tensor an engine then runs, and
    an exported graph's inputs are finite images."""
    s = q.spec
    if not s.dynamic:
        return q(x)
    xv = to_groups(x, s) if s.granularity == "group" else x
    dim = -1 if s.granularity == "group" else s.channel_dim % x.dim()
    lo = xv.amin(dim=dim, keepdim=True) * s.clip_ratio
    hi = xv.amax(dim=dim, keepdim=True) * s.clip_ratio
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if s.symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / s.qmax, min=_EPS)
        zero = torch.zeros_like(scale)
    else:
        scale = torch.clamp((hi - lo) / (s.qmax - s.qmin), min=_EPS)
        zero = torch.clamp(torch.round(-lo / scale) + s.qmin, s.qmin, s.qmax)
    out = (torch.clamp(torch.round(xv / scale) + zero, s.qmin, s.qmax) - zero) * scale
    return from_groups(out, x.shape, s) if s.granularity == "group" else out


def _float_input(mod: QuantLayerMixin, x: Tensor) -> Tensor:
    """`quantize_input` with `_fake_quant` (split halves included)."""
    if not mod.split:
        return _fake_quant(mod.act_quantizer, x)
    dim = mod.channel_dim % x.dim()
    a, b = x.split([mod.split, x.shape[dim] - mod.split], dim=dim)
    return torch.cat([_fake_quant(mod.act_quantizer, a), _fake_quant(mod.act_quantizer_1, b)], dim)


def _layer_forward(mod: QuantLayerMixin, site: _Site | None, flavor: str) -> Any:
    h = mod._modules.get(HADAMARD.keys[0])
    transform = _transform(mod, h.matrix().float() if h is not None else None)
    core = _core(site, flavor) if site is not None else None
    w_hat = mod.quantized_weight().detach()  # float sites: the dequantized weight, a constant

    def forward(x: Tensor) -> Tensor:
        x = transform(x)
        if core is not None:
            y = core(x)
        elif isinstance(mod, nn.Conv2d):
            y = mod._conv_forward(_float_input(mod, x), w_hat, mod.bias)
        else:
            y = F.linear(_float_input(mod, x), w_hat, mod.bias)
        return mod._add_branch(y, x)

    return forward


def _matmul_forward(mod: QuantMatMul, site: _Site | None, flavor: str) -> Any:
    core = _core(site, flavor) if site is not None else None

    def forward(a: Tensor, b: Tensor) -> Tensor:
        if INNER.present(mod):
            a, b = INNER.on_operands(mod, a, b)
        if core is not None:
            return core(a, b)
        return torch.bmm(_fake_quant(mod.act_quantizer, a), _fake_quant(mod.weight_quantizer, b))

    return forward


def _plan(mod: nn.Module, flavor: str) -> _Site | None:
    site = plan_site(mod)
    if flavor == "qdq" and isinstance(site, _TokenSite):
        return None  # per-token codes need MatMulInteger: no QDQ form
    return site


def _path(site: _Site | None, flavor: str) -> str:
    if site is None:
        return FLOAT
    return QDQ if flavor == "qdq" else site.path


def site_paths(bundle: nn.Module, flavor: str = "ort") -> dict[str, str]:
    """Quantized site name -> the path it takes in the exported graph (module docstring)."""
    paths = {}
    for name, mod in bundle.named_modules():
        if isinstance(mod, QuantLayerMixin | QuantMatMul):
            paths[name] = _path(_plan(mod, flavor), flavor)
    return paths


def site_summary(bundle: nn.Module, flavor: str = "ort") -> dict[str, int]:
    """How many sites take each path."""
    return dict(Counter(site_paths(bundle, flavor).values()))


@contextmanager
def export_mode(bundle: nn.Module, flavor: str = "ort") -> Iterator[dict[str, str]]:
    """Route every quantized site of `bundle` (a restorer, or any module holding quantized
    layers) through its export form (`flavor`: "ort" or "qdq"); yields site name -> path."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    paths: dict[str, str] = {}
    patched: list[nn.Module] = []
    try:
        for name, mod in bundle.named_modules():
            if not isinstance(mod, QuantLayerMixin | QuantMatMul):
                continue
            site = _plan(mod, flavor)
            paths[name] = _path(site, flavor)
            if isinstance(mod, QuantMatMul):
                mod.forward = _matmul_forward(mod, site, flavor)
            else:
                mod.forward = _layer_forward(mod, site, flavor)
            patched.append(mod)
        yield paths
    finally:
        for mod in patched:
            del mod.forward


class _Restore(nn.Module):
    def __init__(self, bundle: RestorerBundle) -> None:
        super().__init__()
        self.bundle = bundle

    def forward(self, lq: Tensor) -> Tensor:
        return self.bundle.restore(lq)


def data_path(path: str | Path) -> Path:
    """Where an export above `EXTERNAL_ABOVE` keeps its tensors: `<name>.data` beside the
    .onnx (the name the graph records, so ORT finds it in the same folder)."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def onnx_bytes(path: str | Path) -> int:
    """Bytes on disk of an exported model: the .onnx and, where it has one, its data file."""
    data = data_path(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def save_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    external_above: int = EXTERNAL_ABOVE,
) -> None:
    """Trace `module` on `args` into `path` atomically; above `external_above` bytes the tensors
    go to one data file beside it (`data_path`).

    Why: a protobuf message cannot exceed 2 GB, and the SD-2.1 UNet in FP32 is 3.5 GB. Above
    that size the TorchScript exporter itself writes every initializer as its own file next to
    the .onnx (hundreds of files, named after the tensors, written in place); so the export goes
    to a private folder beside `path` and, when it is large, is rewritten there with all tensors
    in one file. The data file is renamed into place before the .onnx that refers to it, and a
    failure leaves neither. Smaller models stay one self-contained file, as before.
    """
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp.parent))
        try:
            raw = work / path.name
            torch.onnx.export(
                module,
                args,
                str(raw),
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
            )
            files = list(work.iterdir())
            # torch writes tensors beside the .onnx by its own measure of the proto's size, which
            # need not agree with ours: any file beside it means the data-file path
            if files == [raw] and raw.stat().st_size <= external_above:
                os.replace(raw, tmp)
                return
            model = onnx.load(str(raw))  # reads torch's per-tensor files back
            out = work / "one-data-file"
            out.mkdir()
            data = data_path(path)
            onnx.save_model(
                model,
                str(out / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
                convert_attribute=True,  # Constant nodes too (Hadamards, float sites' weights)
            )
            del model
            with atomic_path(data) as tmp_data:
                os.replace(out / data.name, tmp_data)
            os.replace(out / path.name, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@torch.no_grad()
def export_onnx(
    bundle: RestorerBundle,
    path: str | Path,
    batch: int = 1,
    flavor: str = "ort",
    external_above: int = EXTERNAL_ABOVE,
) -> dict[str, Any]:
    """Write `bundle.restore` as ONNX (atomically, fixed input [batch, 3, S, S]; tensors in
    `data_path(path)` above `external_above` bytes, see `save_onnx`); returns the per-site
    paths (`sites`), their counts (`paths`) and the exported node types (`nodes`)."""
    import onnx

    bundle = bundle.cpu().eval()
    s = bundle.image_size
    x = torch.rand(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    with export_mode(bundle, flavor) as paths:
        save_onnx(_Restore(bundle), (x,), path, [INPUT], [OUTPUT], external_above)
    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = Counter(n.op_type for n in graph.node)
    return {"sites": paths, "paths": dict(Counter(paths.values())), "nodes": dict(nodes)}
