import copy

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from quantface.quant.apply import calibrate_weights, plan_of, set_activation_ranges
from quantface.quant.attention import QuantAttnProcessor
from quantface.quant.calibration import collect_calibration
from quantface.quant.layers import QuantConv2d, QuantLinear, QuantMatMul
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import LayerQuant
from quantface.quant.wrap import set_quant_mode, unwrap_model, wrap_model


def _psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


def test_sites_cover_unet_vae_and_attention_but_not_embedder(micro_model):
    sites = micro_model.quant_targets()
    kinds = set(sites.values())
    assert kinds == {"linear", "conv2d", "matmul"}
    assert not any(n.startswith("embedder") for n in sites)
    assert any(n.startswith("vae.") and k == "matmul" for n, k in sites.items())
    assert any("attn2" in n and n.endswith("qk_matmul") for n in sites)  # cross-attention


@torch.no_grad()
def test_wrap_unwrap_restores_exact_outputs(micro_model, micro_images):
    ref = micro_model.restore(micro_images)
    weights_before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    spec = QuantSpec(4)
    layout = {n: LayerQuant(k, spec, spec) for n, k in micro_model.quant_targets().items()}
    wrap_model(micro_model, layout)
    assert any(isinstance(m, QuantConv2d) for m in micro_model.modules())
    assert any(isinstance(m, QuantLinear) for m in micro_model.modules())
    assert any(isinstance(m, QuantMatMul) for m in micro_model.modules())
    set_quant_mode(micro_model, "off")  # pass-through quantizers: only the attention math differs
    assert torch.allclose(micro_model.restore(micro_images), ref, atol=1e-5)
    unwrap_model(micro_model)
    assert not any(
        isinstance(m, (QuantLinear, QuantConv2d, QuantMatMul)) for m in micro_model.modules()
    )
    assert all(
        isinstance(m.processor, AttnProcessor2_0)
        for m in micro_model.modules()
        if isinstance(m, Attention)
    )
    after = micro_model.state_dict()
    assert after.keys() == weights_before.keys()
    assert all(torch.equal(after[k], weights_before[k]) for k in after)
    assert torch.equal(micro_model.restore(micro_images), ref)


@torch.no_grad()
def test_quant_attention_processor_matches_diffusers():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    ref = attn(x, encoder_hidden_states=ctx)
    attn.set_processor(QuantAttnProcessor())
    assert torch.allclose(attn(x, encoder_hidden_states=ctx), ref, atol=1e-6)


@torch.no_grad()
def _quantized(model, images, bits):
    q = copy.deepcopy(model)
    plan = BitPlan.uniform(q.quant_targets(), bits, bits)
    calib = collect_calibration(copy.deepcopy(model), images, batch_size=2, sample_rows=64)
    wrap_model(q, QuantScheme().layout(q, q.quant_targets(), plan))
    calibrate_weights(q)
    set_activation_ranges(q, calib)
    return q, plan


@torch.no_grad()
def test_eight_bit_model_is_near_lossless_and_two_bit_is_not(micro_model, micro_images):
    ref = micro_model.restore(micro_images)
    q8, plan = _quantized(micro_model, micro_images, 8)
    q2, _ = _quantized(micro_model, micro_images, 2)
    p8, p2 = _psnr(q8.restore(micro_images), ref), _psnr(q2.restore(micro_images), ref)
    assert p8 > 30  # an untrained micro model amplifies errors; trained models do far better
    assert p2 < p8 - 10
    assert plan_of(q8).to_dict() == plan.to_dict()
