"""Real int8 GEMMs (torch._int_mm) agree with the fake-quant layers they replace.

Tolerance: the integer path is exact up to its final FP32 rescale; the fake-quant path sums K
FP32 products of dequantized values, whose rounding error is at most ~K * 2^-24 * sum|a||w|
(the standard dot-product bound). So `|y_int - y_fake| <= (K + 4) * 2^-23 * (|A_q| |W_q|^T + |b|)`
elementwise, with A_q, W_q the dequantized operands: a genuine mismatch (a wrong zero point, a
wrong code) is a whole quantization step, orders of magnitude above this bound.
"""

import pytest
import torch
from torch import nn

from quantface.quant.apply import calibrate_weights
from quantface.quant.intkernels import (
    IntConv2d,
    IntLinear,
    convert_to_int,
    int_bmm,
    unsupported,
)
from quantface.quant.layers import QuantConv2d, QuantLinear
from quantface.quant.quantizer import QuantSpec, UniformQuantizer
from quantface.quant.specs import InputTransform, LayerQuant

EPS = 2.0**-23


def _bound(a_q: torch.Tensor, w_q: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k = a_q.shape[-1]
    mag = a_q.abs() @ w_q.abs().t() + (bias.abs() if bias is not None else 0)
    return (k + 4) * EPS * mag + 1e-30


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dynamic", [False, True])
@torch.no_grad()
def test_int_linear_matches_fake_quant(bits, symmetric, dynamic):
    g = torch.Generator().manual_seed(bits)
    gran = "token" if dynamic else "tensor"
    a = QuantSpec(bits, symmetric, gran, dynamic=dynamic, channel_dim=-1)
    lq = LayerQuant("linear", a, QuantSpec(bits, symmetric, "channel"))
    layer = QuantLinear.from_float(nn.Linear(37, 11), lq)
    calibrate_weights(layer)
    x = torch.randn(5, 7, 37, generator=g) * 3
    if not dynamic:
        layer.act_quantizer.set_range(x.min() * 0.7, x.max() * 0.7)  # some clipping too
    ref, out = layer(x), IntLinear(layer)(x)
    bound = _bound(layer.act_quantizer(x).reshape(-1, 37), layer.quantized_weight(), layer.bias)
    assert ((out - ref).reshape(-1, 11).abs() <= bound).all()


@pytest.mark.parametrize("bits", [8, 4])
@torch.no_grad()
def test_int_conv_and_transforms_match_fake_quant(bits):
    g = torch.Generator().manual_seed(1)
    a = QuantSpec(bits, False, "tensor", channel_dim=1)
    lq = LayerQuant("conv2d", a, QuantSpec(bits, False, "channel"), InputTransform(scale=True))
    layer = QuantConv2d.from_float(nn.Conv2d(5, 6, 3, stride=2, padding=1), lq)
    layer.input_scale.uniform_(0.5, 2, generator=g)
    calibrate_weights(layer)
    x = torch.randn(2, 5, 9, 9, generator=g)
    layer.act_quantizer.set_range(x.min(), x.max())
    ref, out = layer(x), IntConv2d(layer)(x)
    assert out.shape == ref.shape
    cols = torch.nn.functional.unfold(layer.act_quantizer(layer.transform_input(x)), 3, 1, 1, 2)
    a_q = cols.transpose(1, 2).reshape(-1, 45)
    bound = _bound(a_q, layer.quantized_weight().flatten(1), layer.bias)
    assert ((out - ref).permute(0, 2, 3, 1).reshape(-1, 6).abs() <= bound).all()


@torch.no_grad()
def test_int_attention_matmul_matches_fake_quant():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 6, 8, generator=g), torch.randn(3, 8, 5, generator=g)
    qa, qb = UniformQuantizer(QuantSpec(8)), UniformQuantizer(QuantSpec(8))
    qa.set_range(a.min(), a.max())
    qb.set_range(b.min(), b.max())
    ref = torch.bmm(qa(a), qb(b))
    bound = 12 * EPS * torch.bmm(qa(a).abs(), qb(b).abs()) + 1e-30
    assert ((int_bmm(a, b, qa, qb) - ref).abs() <= bound).all()


def test_unsupported_layers_are_named_and_left_simulated():
    lq = LayerQuant("linear", QuantSpec(8, channel_dim=-1), QuantSpec(8, granularity="channel"))
    wide = LayerQuant("linear", QuantSpec(16, channel_dim=-1), QuantSpec(8, granularity="channel"))
    root = nn.Sequential(
        QuantLinear.from_float(nn.Linear(4, 4), lq), QuantLinear.from_float(nn.Linear(4, 4), wide)
    )
    for m in root:
        calibrate_weights(m)
    assert unsupported(root[1]) and "wider" in unsupported(root[1])
    skipped = convert_to_int(root)
    assert list(skipped) == ["1"] and isinstance(root[0], IntLinear)
