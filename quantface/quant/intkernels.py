"""Real integer inference on CPU: int8 GEMMs (`torch._int_mm`) for quantized Linear/Conv2d.

Simulation (fake-quant) multiplies dequantized FP32 values; a deployment multiplies the integer
codes and rescales once. This module does the latter with the one integer GEMM this torch has on
x86 CPUs, `torch._int_mm` (int8 x int8 -> int32, oneDNN/VNNI), so the speed and the agreement of
real integer inference can be measured, not assumed:

    y[m, o] = s_a s_w[o] * sum_k (q_a[m, k] - z_a)(q_w[o, k] - z_w[o]) + b[o]

Codes of up to 8 bits travel in int8 containers (asymmetric 8-bit codes 0..255 are offset by
-128); the zero points are removed after the GEMM with row/column sums (exact integer arithmetic):
sum (a - za)(w - zw) = sum a w - zw sum a - za (sum w - K zw). W4A4/W4A6 codes fit the same
containers, so they run on this int8 kernel: torch has no int4 x int4 GEMM on CPU (its int4
kernels, `_weight_int4pack_mm_for_cpu`, are weight-only: int4 weights, float activations).

Supported: weights per output channel (static), activations per tensor (static) or, for a
Linear, per token (dynamic, QuaRot); bits <= 8; input transforms (smoothing, online Hadamard,
low-rank branch) run as in the simulated layer, in FP32. A conv is an im2col (`unfold`) GEMM.
Split (Q-Diffusion) and per-group layers are left simulated and listed by `convert_to_int`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantface.quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear
from quantface.quant.pack import weight_codes
from quantface.quant.quantizer import QuantSpec, UniformQuantizer, qparams_from_range, reduce_range


def _offset(spec: QuantSpec) -> int:
    """What to subtract from a code so it fits int8 (asymmetric 8-bit codes are 0..255)."""
    return 128 if spec.qmax > 127 else 0


def act_qparams(q: UniformQuantizer, x: Tensor) -> tuple[Tensor, Tensor]:
    """(Δ, z) the activation quantizer uses on x: its frozen ones, or per token from x."""
    if not q.spec.dynamic:
        return q.scale, q.zero_point
    lo, hi = reduce_range(x, q.spec)
    if q.spec.clip_ratio != 1.0:
        lo, hi = lo * q.spec.clip_ratio, hi * q.spec.clip_ratio
    scale, zero = qparams_from_range(lo, hi, q.spec)
    return scale.to(x.dtype), zero.to(x.dtype)


def int_gemm(a: Tensor, za: Tensor, w_t: Tensor, zw: Tensor, w_colsum: Tensor) -> Tensor:
    """sum_k (a - za)(w - zw) exactly: a [M, K] int8, w_t [K, N] int8, za [M|1], zw [N].

    Every term is at most K * 2^14 in magnitude (int8 operands and zero points), so the sum of
    the four stays below 2^31 for K < 2^15 and int32 is exact; wider layers use int64.
    """
    k = a.shape[1]
    dt = torch.int32 if k < 2**15 else torch.int64
    acc = torch._int_mm(a, w_t).to(dt)
    if bool(zw.any()):
        acc -= a.sum(1, dtype=dt)[:, None] * zw.to(dt)[None, :]
    acc -= za.to(dt)[:, None] * (w_colsum.to(dt) - k * zw.to(dt))[None, :]
    return acc


class _IntBase(nn.Module):
    """Integer weights of one quantized layer, prepared once (codes, zero points, column sums)."""

    def __init__(self, layer: QuantLayerMixin) -> None:
        super().__init__()
        reason = unsupported(layer)
        if reason:
            raise ValueError(reason)
        self.layer = layer
        wq, aq = layer.weight_quantizer, layer.act_quantizer
        codes = weight_codes(wq, layer.weight.detach()).flatten(1)  # [O, K]
        ow = _offset(wq.spec)
        self.register_buffer("w_t", (codes - ow).to(torch.int8).t().contiguous())
        self.register_buffer("w_colsum", self.w_t.sum(0, dtype=torch.int64))
        self.register_buffer("zw", (wq.zero_point.flatten() - ow).to(torch.int64))
        self.register_buffer("sw", wq.scale.flatten().float())
        self.a_offset = _offset(aq.spec)

    def _codes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [M, K] -> (int8 codes, int64 zero points [M|1], FP32 scales [M|1])."""
        s = self.layer.act_quantizer.spec
        scale, zero = act_qparams(self.layer.act_quantizer, x)
        off = self.a_offset
        q = torch.round(x / scale).add_(zero - off).clamp_(s.qmin - off, s.qmax - off)
        za = (zero.reshape(-1) - off).to(torch.int64)
        return q.to(torch.int8), za, scale.reshape(-1, 1).float()


class IntLinear(_IntBase):
    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        x = layer.transform_input(x)
        rows = x.reshape(-1, x.shape[-1])
        a, za, sa = self._codes(rows)
        y = int_gemm(a, za, self.w_t, self.zw, self.w_colsum).float() * sa * self.sw
        if layer.bias is not None:
            y = y + layer.bias
        return layer._add_branch(y.reshape(*x.shape[:-1], -1), x)


class IntConv2d(_IntBase):
    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        x = layer.transform_input(x)
        n, _, h, w = x.shape
        a_spec = layer.act_quantizer.spec
        scale, zero = layer.act_quantizer.scale, layer.act_quantizer.zero_point
        centred = torch.clamp(torch.round(x / scale) + zero, a_spec.qmin, a_spec.qmax) - zero
        cols = F.unfold(centred, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        # zero padding of (q - z) is the code z: add z back after unfolding
        a = (cols.transpose(1, 2).reshape(-1, cols.shape[1]) + zero - self.a_offset).to(torch.int8)
        za = (zero.reshape(1) - self.a_offset).to(torch.int64)
        y = int_gemm(a, za, self.w_t, self.zw, self.w_colsum).float() * scale * self.sw
        if layer.bias is not None:
            y = y + layer.bias
        kh, kw = layer.kernel_size
        (sh, sw), (dh, dw) = layer.stride, layer.dilation
        ph, pw = layer.padding
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        y = y.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)
        return layer._add_branch(y, x)


def unsupported(layer: nn.Module) -> str | None:
    """Why a layer cannot run on the int8 kernel (None: it can)."""
    if not isinstance(layer, QuantLayerMixin):
        return "not a quantized Linear/Conv2d"
    w, a = layer.weight_quantizer.spec, layer.act_quantizer.spec
    if layer.split:
        return "split input quantizer (two GEMMs; not implemented)"
    if w.bits > 8 or a.bits > 8:
        return f"w{w.bits}a{a.bits}: wider than the int8 kernel"
    if w.granularity != "channel" or w.dynamic:
        return f"{w.granularity} weights (per-channel static only)"
    if isinstance(layer, QuantConv2d):
        if a.granularity != "tensor" or a.dynamic:
            return "conv activations must be per-tensor static (im2col mixes pixels)"
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return "grouped, string-padded or non-zero-padded conv"
    elif not (a.granularity == "tensor" and not a.dynamic) and a.granularity != "token":
        return f"{a.granularity} activations (per-tensor static or per-token only)"
    return None


def convert_to_int(root: nn.Module) -> dict[str, str]:
    """Replace every supported quantized layer by its integer version, in place.

    Returns the layers left simulated, each with the reason. Attention matmuls stay simulated.
    """
    skipped = {}
    for name, mod in list(root.named_modules()):
        if not isinstance(mod, QuantLayerMixin):
            continue
        reason = unsupported(mod)
        if reason:
            skipped[name] = reason
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        cls = IntLinear if isinstance(mod, QuantLinear) else IntConv2d
        setattr(parent, attr, cls(mod))
    return skipped


def int_bmm(a: Tensor, b: Tensor, qa: UniformQuantizer, qb: UniformQuantizer) -> Tensor:
    """Quantized a @ b (attention QK^T, AV) with per-tensor static operands, one GEMM per batch.

    `torch.bmm` on int8 returns int8 (it overflows), so each batch entry calls `_int_mm`.
    """
    out = []
    sa, za_f = qa.scale, qa.zero_point
    sb, zb_f = qb.scale, qb.zero_point
    oa, ob = _offset(qa.spec), _offset(qb.spec)
    ca = (torch.clamp(torch.round(a / sa) + za_f, qa.spec.qmin, qa.spec.qmax) - oa).to(torch.int8)
    cb = (torch.clamp(torch.round(b / sb) + zb_f, qb.spec.qmin, qb.spec.qmax) - ob).to(torch.int8)
    za = (za_f.reshape(1) - oa).to(torch.int64)
    for i in range(a.shape[0]):
        colsum = cb[i].sum(0, dtype=torch.int64)
        zb = (zb_f.reshape(1) - ob).to(torch.int64).expand(cb.shape[2])
        out.append(int_gemm(ca[i], za, cb[i].contiguous(), zb, colsum))
    return torch.stack(out).float() * (sa * sb)
