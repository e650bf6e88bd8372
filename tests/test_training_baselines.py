"""Q-Diffusion, PassionSR and EfficientDM: the learned parts must work and must matter."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.qdiffusion import shortcut_splits
from quantface.errors import ConfigError
from quantface.methods.base import smoothable
from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.adaround import adaround, temperature
from quantface.quant.apply import (
    calibrate_weights,
    current_layout,
    plan_of,
    set_activation_ranges,
)
from quantface.quant.bounds import learnable_bounds
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import cost_table
from quantface.quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear, QuantMatMul
from quantface.quant.learnable import clamp_scales_, learnable_scales, learnable_zero_points
from quantface.quant.let import learnable_let, matmul_init_scale
from quantface.quant.lora import weight_lora
from quantface.quant.pack import dequantize, weight_codes
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, qparams_from_range
from quantface.quant.reconstruction import (
    ReconConfig,
    block_error,
    capture,
    capture_outputs,
    find_blocks,
    reconstruct,
)
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.transforms import border_dependent, border_shift_map, shift_taps
from quantface.quant.wrap import set_quant_mode, wrap_model

FAST = {
    "qdiffusion": {"w_iters": 8, "a_iters": 4, "n_samples": 4, "batch_size": 2},
    "passionsr": {"let_steps": 6, "lbq_steps": 6},
    "efficientdm": {"steps": 8},
}


def _psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


@pytest.fixture
def micro_calib(micro_model, micro_images):
    return collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)


@pytest.mark.parametrize("method", list(FAST))
def test_method_on_micro_model(method, micro_model, micro_images, micro_calib, tmp_path):
    with torch.no_grad():
        ref = micro_model.restore(micro_images)
    psnr = {}
    for bits in (8, 4):
        plan = BitPlan.uniform(micro_model.quant_targets(), bits, bits)
        result = quantize_bundle(method, micro_model, micro_calib, plan, FAST[method])
        q = result.model
        assert not any(p.requires_grad for p in q.parameters() if p.grad is not None)
        with torch.no_grad():
            out = q.restore(micro_images)
        psnr[bits] = _psnr(out, ref)
        save_bundle(q, tmp_path / "q.pt", layout=current_layout(q), meta={"method": method})
        back, layout, _ = load_bundle(tmp_path / "q.pt")
        assert layout == current_layout(q)
        with torch.no_grad():
            assert torch.equal(back.restore(micro_images), out)
    assert psnr[8] > 30 and psnr[8] > psnr[4] + 5, psnr
    # what each keeps at higher precision is in the plan and paid for in the cost
    final, notes = result.plan, result.notes
    assert final == plan_of(q, notes) and result.cost["rows"] == cost_table(q, final)["rows"]
    high = {r["layer"] for r in result.cost["rows"] if max(r["w_bits"], r["a_bits"]) > 4}
    assert high and high <= set(notes), (high, notes)
    if method == "qdiffusion":
        av = [n for n in final if n.endswith("av_matmul")]
        assert av and all(final[n].a_bits == 16 for n in av)
        split = [n for n, lq in current_layout(q).items() if lq.split]
        assert split and split == sorted(shortcut_splits(micro_model))
    else:
        assert "unet.conv_out" in notes and final["unet.conv_out"].w_bits == 8
    with torch.no_grad():
        assert torch.equal(micro_model.restore(micro_images), ref)  # FP model untouched


def _wrapped(model, bits=4):
    model = copy.deepcopy(model)
    plan = BitPlan.uniform(model.quant_targets(), bits, bits)
    wrap_model(model, QuantScheme().layout(model, model.quant_targets(), plan))
    return model


def test_act_mode_selects_matmul_operands_by_role_not_attribute_name(micro_model):
    model = _wrapped(micro_model)
    set_quant_mode(model, "off", "act")
    mms = [m for m in model.modules() if isinstance(m, QuantMatMul)]
    assert mms and all(m.act_quantizer.mode == m.weight_quantizer.mode == "off" for m in mms)
    layers = [m for m in model.modules() if isinstance(m, QuantLayerMixin)]
    assert all(m.weight_quantizer.mode == "quant" and m.act_quantizer.mode == "off" for m in layers)
    set_quant_mode(model, "quant")
    set_quant_mode(model, "off", "weight")
    assert all(m.weight_quantizer.mode == "quant" for m in mms)  # an operand is no weight


def test_qdiffusion_weight_stage_quantizes_no_activation(micro_model, micro_calib, monkeypatch):
    """Official weight stage: set_quant_state(True, False) on the whole network, K^T/V included."""
    import baselines.qdiffusion as qd

    roots, seen = [], []
    real_find, real_reconstruct = qd.find_blocks, qd.reconstruct

    def find(model, images, *types):
        roots.append(model)
        return real_find(model, images, *types)

    def spy(block, inputs, targets, groups, cfg, regularizer=None, **kw):
        if regularizer is not None:  # the AdaRound stage
            seen.append({q.mode for m in roots[0].modules() for q in _act_quantizers(m)})
        return real_reconstruct(block, inputs, targets, groups, cfg, regularizer, **kw)

    monkeypatch.setattr(qd, "find_blocks", find)
    monkeypatch.setattr(qd, "reconstruct", spy)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle("qdiffusion", micro_model, micro_calib, plan, FAST["qdiffusion"]).model
    assert seen and all(modes == {"off"} for modes in seen), seen
    assert {qz.mode for m in q.modules() for qz in _act_quantizers(m)} == {"quant"}


def _act_quantizers(mod):
    if isinstance(mod, QuantMatMul):
        return [mod.act_quantizer, mod.weight_quantizer]
    if isinstance(mod, QuantLayerMixin):
        return [qz for qz, role in mod.layer_quantizers() if role == "act"]
    return []


def test_reconstruction_units_are_qdiffusion_blocks_and_lone_layers(micro_model, micro_images):
    model = _wrapped(micro_model)
    set_quant_mode(model, "off")  # uncalibrated: the unit search runs the model once
    units = {b.name: b.layers for b in find_blocks(model, micro_images)}
    tf = "unet.mid_block.attentions.0"
    assert f"{tf}.transformer_blocks.0" in units and tf not in units
    for layer in (f"{tf}.proj_in", f"{tf}.proj_out", "unet.time_embedding.linear_1"):
        assert units[layer] == (layer,)  # layer reconstruction
    assert "unet.mid_block.resnets.0" in units and "vae.decoder.mid_block.attentions.0" in units
    covered = [n for layers in units.values() for n in layers]
    sites = {n for n, m in model.named_modules() if isinstance(m, QuantLayerMixin)}
    assert sorted(covered) == sorted(sites)  # every layer in exactly one unit


def test_qdiffusion_ablation_switches_give_the_earlier_ports_units_and_weight_stage(
    micro_model, micro_images
):
    """`units: transformer` and `weight_stage_attn_operands: quantized` (config/baseline_fixes)."""
    from baselines.qdiffusion import UNIT_TYPES, activations_off

    model = _wrapped(micro_model)
    set_quant_mode(model, "off")
    units = {b.name for b in find_blocks(model, micro_images, UNIT_TYPES["transformer"])}
    tf = "unet.mid_block.attentions.0"
    assert (
        tf in units and f"{tf}.proj_in" not in units and f"{tf}.transformer_blocks.0" not in units
    )
    set_quant_mode(model, "quant")
    mms = [m for m in model.modules() if isinstance(m, QuantMatMul)]
    with activations_off(model, attn_operands=False):
        assert all(
            m.weight_quantizer.mode == "quant" and m.act_quantizer.mode == "off" for m in mms
        )
    with activations_off(model):
        assert all(m.weight_quantizer.mode == "off" for m in mms)
    with pytest.raises(ConfigError, match="units"):
        quantize_bundle(
            "qdiffusion",
            micro_model,
            None,
            BitPlan.uniform(micro_model.quant_targets(), 4, 4),
            {"units": "x"},
        )


def test_qdiffusion_running_stat_sets_ranges_to_the_batch_extremes_average(
    micro_model, micro_calib
):
    opts = {**FAST["qdiffusion"], "a_iters": 0, "running_stat": True}  # no LSQ after it
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle("qdiffusion", micro_model, micro_calib, plan, opts).model
    images = micro_calib.images[: opts["n_samples"]]
    batches = capture(q, "unet.conv_in", images, opts["batch_size"], "input")  # a lone layer
    lo, hi = batches[0][0][0].min(), batches[0][0][0].max()
    for args, _ in batches:  # the first batch starts the average, then every batch
        lo, hi = 0.95 * lo + 0.05 * args[0].min(), 0.95 * hi + 0.05 * args[0].max()
    aq = q.get_submodule("unet.conv_in").act_quantizer
    scale, zero = qparams_from_range(lo, hi, aq.spec)
    assert torch.allclose(aq.scale, scale) and torch.equal(aq.zero_point, zero)


def test_qdiffusion_running_stat_auto_runs_only_at_8_bit_activations(
    micro_model, micro_calib, micro_images, monkeypatch
):
    """The official commands use --running_stat at --act_bit 8 only."""
    import baselines.qdiffusion as qd

    def act_scale(a_bits, min_bits):
        model = _wrapped(micro_model, a_bits)
        calibrate_weights(model)
        set_activation_ranges(model, micro_calib)
        unit = model.get_submodule("unet.conv_in")
        before = unit.act_quantizer.scale.clone()
        qd.running_stat(
            unit, capture(model, "unet.conv_in", micro_images[:4], 2, "input"), min_bits=min_bits
        )
        return before, unit.act_quantizer.scale

    auto = qd.RUNNING_STAT_MIN_BITS["auto"]
    assert torch.equal(*act_scale(4, auto))  # a 4-bit quantizer keeps its Lp-2.4 range
    assert not torch.equal(*act_scale(4, qd.RUNNING_STAT_MIN_BITS[True]))
    assert not torch.equal(*act_scale(8, auto))  # an 8-bit one gets the running min-max

    seen = []
    monkeypatch.setattr(qd, "running_stat", lambda unit, inputs, min_bits: seen.append(min_bits))
    opts = {**FAST["qdiffusion"], "w_iters": 0, "a_iters": 0}  # running_stat defaults to auto
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    quantize_bundle("qdiffusion", micro_model, micro_calib, plan, opts)
    assert seen and set(seen) == {auto}


def _layer(bits=3, seed=0, conv=False):
    g = torch.Generator().manual_seed(seed)
    if conv:
        fp = nn.Conv2d(12, 10, 3, padding=1)
        x = torch.randn(16, 12, 6, 6, generator=g)
    else:
        fp = nn.Linear(24, 16)
        x = torch.randn(64, 24, generator=g)
    with torch.no_grad():
        fp.weight.copy_(torch.randn(fp.weight.shape, generator=g) * 0.3)
    kind = "conv2d" if conv else "linear"
    spec_a = QuantSpec(8, channel_dim=1 if conv else -1)
    lq = LayerQuant(kind, spec_a, QuantSpec(bits, granularity="channel", channel_dim=0))
    cls = QuantConv2d if conv else QuantLinear
    q = cls.from_float(copy.deepcopy(fp), lq)
    q.requires_grad_(False)
    calibrate_weights(q)
    q.act_quantizer.set_range(x.min(), x.max())
    return fp, q, x


def test_adaround_beats_nearest_rounding_and_decides_every_weight():
    fp, q, x = _layer(bits=3, conv=True)
    with torch.no_grad():
        y = fp(x)
    inputs, targets = [((x,), {})], [y]
    set_quant_mode(q, "off", "act")
    rtn = block_error(q, inputs, targets)
    iters = 1000
    with adaround({"l": q}) as rounders:
        r = rounders["l"]
        cfg = ReconConfig(iters, 3e-2)

        def reg(step):
            beta = temperature(step, iters, 0.2, (20.0, 2.0))
            return None if beta is None else 0.1 * r.regularizer(beta)

        reconstruct(q, inputs, targets, [{"params": list(r.parameters())}], cfg, reg)
        assert max(p.undecided() for p in r.parts) < 0.01  # h(V) converged to 0/1
        soft = block_error(q, inputs, targets)
    hard = block_error(q, inputs, targets)  # baked into the weight, RTN quantizer reproduces it
    assert hard < 0.9 * rtn, (hard, rtn)
    assert abs(hard - soft) < 0.02 * rtn
    w = q.weight / q.weight_quantizer.scale
    assert torch.allclose(w, w.round(), atol=1e-4)  # on the grid


def test_learned_activation_step_lowers_block_error():
    fp, q, x = _layer(bits=8)
    x = x.clone()
    x[0, 3], x[1, 5] = 40.0, -30.0  # two stray values make min-max far too coarse at 4 bit
    q.act_quantizer.spec = QuantSpec(4, channel_dim=-1)
    q.act_quantizer.set_range(x.min(), x.max())
    with torch.no_grad():
        y = fp(x)
    inputs, targets = [((x,), {})], [y]
    before = block_error(q, inputs, targets, 2.4)
    with learnable_scales(q, "act") as params:
        cfg = ReconConfig(150, 3e-2, 2.4, cosine=True)
        reconstruct(
            q, inputs, targets, [{"params": params}], cfg, None, lambda: clamp_scales_(params)
        )
    assert block_error(q, inputs, targets, 2.4) < 0.9 * before


def test_split_shortcut_quantizes_each_half_on_its_own_range(micro_model, micro_images):
    splits = shortcut_splits(micro_model)
    assert splits
    name, split = next(iter(splits.items()))
    conv = micro_model.get_submodule(name)
    seen = {}
    h = conv.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        micro_model.restore(micro_images)
    h.remove()
    x = seen["x"]
    lq = LayerQuant("conv2d", QuantSpec(4, channel_dim=1), QuantSpec(4, "channel"), split=split)
    lq = LayerQuant("conv2d", QuantSpec(4, channel_dim=1), QuantSpec(4, granularity="channel"))
    lq = LayerQuant(lq.kind, lq.a, lq.w, lq.transform, split)
    q = QuantConv2d.from_float(copy.deepcopy(conv), lq)
    calibrate_weights(q)
    q.act_quantizer.set_range(x[:, :split].min(), x[:, :split].max())
    q.act_quantizer_1.set_range(x[:, split:].min(), x[:, split:].max())
    assert q.weight_quantizer.scale.shape == q.weight_quantizer_1.scale.shape
    set_quant_mode(q, "off")
    with torch.no_grad():
        assert torch.allclose(q(x), conv(x), atol=1e-6)
    assert LayerQuant.from_dict(lq.to_dict()) == lq
    assert "split" not in LayerQuant(lq.kind, lq.a, lq.w).to_dict()  # old layouts unchanged


@torch.no_grad()
@pytest.mark.parametrize(
    "conv", [None, {}, {"padding": 0}, {"stride": 2}, {"padding": (2, 1), "dilation": 2}]
)
def test_let_scale_and_shift_leave_the_fp_output_unchanged(conv):
    """Exact on Linear and every conv, zero-padded ones included (their border correction)."""
    fp, q, x = _layer(conv=conv is not None)
    if conv:
        for k, v in conv.items():  # same geometry on both sides
            setattr(fp, k, v if isinstance(v, tuple) else (v, v))
            setattr(q, k, getattr(fp, k))
    q.add_transform(InputTransform(scale=True, shift=True))
    g = torch.Generator().manual_seed(5)
    n = q.input_scale.numel()
    q.input_scale.copy_(torch.rand(n, generator=g) + 0.5)
    q.input_shift.copy_(torch.randn(n, generator=g) * 3)  # a large d: borders would show
    with learnable_let({"l": q}):  # recomputes W*s and W d from the FP weight on each call
        set_quant_mode(q, "off")
        assert torch.allclose(q(x), fp(x), atol=1e-4)
    assert torch.allclose(q(x), fp(x), atol=1e-4)
    assert torch.allclose(q.to_float()(x), fp(x), atol=1e-4)


def test_let_keeps_no_second_copy_of_the_weights():
    """At full size a copy of every weight is 3.5 GB: the stage trains s on the FP weight in
    place, and W*diag(s) lives only while its layer runs (the rest of the graph holds it)."""
    fp, q, x = _layer(conv=True)
    q.add_transform(InputTransform(scale=True, shift=True))
    q.input_scale.fill_(2.0)
    storage = q.weight.data_ptr()
    with learnable_let({"l": q}) as params:
        set_quant_mode(q, "off")
        y = q(x)
        assert "weight" not in q.__dict__ and "weight" not in q._parameters  # dropped
        y.sum().backward()  # the gradient still reaches s
        assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    assert q.weight.data_ptr() == storage  # the FP weight became W*diag(s) in place
    with torch.no_grad():
        assert torch.allclose(q(x), fp(x), atol=1e-4)


@torch.no_grad()
def test_border_shift_map_is_the_conv_of_the_broadcast_shift():
    """The official correction conv(d.expand_as(x), W): constant inside, smaller at the borders."""
    conv = nn.Conv2d(5, 3, 3, stride=2, padding=1)
    g = torch.Generator().manual_seed(0)
    w, d = torch.randn(3, 5, 3, 3, generator=g), torch.randn(5, generator=g)
    x_hw = (7, 6)
    ref = F.conv2d(d.view(1, 5, 1, 1).expand(1, 5, *x_hw), w, None, 2, 1)[0]
    got = border_shift_map(conv, shift_taps(w, d), x_hw, ref.shape[-2:])
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(ref[:, 0, 0], ref[:, 1, 1])  # position dependent at the border
    assert border_dependent(conv) and not border_dependent(nn.Conv2d(5, 3, 1))


@torch.no_grad()
def test_attention_let_scale_leaves_the_fp_product_unchanged_and_balances_operands():
    g = torch.Generator().manual_seed(0)
    lq = LayerQuant("matmul", QuantSpec(4), QuantSpec(4), InputTransform(inner=6))
    mm = QuantMatMul(lq)
    a = torch.randn(2, 5, 6, generator=g) * torch.tensor([1, 1, 1, 1, 1, 40.0])  # outlier dim
    b = torch.randn(2, 6, 7, generator=g)
    mm.inner_scale.copy_(matmul_init_scale(a.abs().amax((0, 1)), b.abs().amax((0, 2)), 0.5))
    set_quant_mode(mm, "off")
    assert torch.allclose(mm(a, b), torch.bmm(a, b), atol=1e-4)
    assert mm.inner_scale[-1] < 0.5 * mm.inner_scale[:-1].min()  # q·s shrinks the outlier
    with pytest.raises(ValueError, match="calibration size"):
        mm(torch.randn(2, 5, 4), torch.randn(2, 4, 7))


def test_passionsr_transform_keeps_fp_output(micro_model, micro_images, micro_calib):
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle("passionsr", micro_model, micro_calib, plan, FAST["passionsr"]).model
    shifted = [m for m in q.modules() if "input_shift" in getattr(m, "_buffers", {})]
    assert shifted and any(m.input_shift.abs().max() > 0 for m in shifted)  # d was learned
    padded = [m for m in shifted if "shift_taps" in m._buffers]  # every 3x3 conv has its shift
    assert padded and any(m.input_shift.abs().max() > 0 for m in padded)
    mms = [m for m in q.modules() if isinstance(m, QuantMatMul)]
    assert mms and all(m.transform_spec().inner for m in mms)  # attention LET everywhere
    assert any((m.inner_scale - 1).abs().max() > 1e-3 for m in mms)
    set_quant_mode(q, "off")
    with torch.no_grad():
        ref = micro_model.restore_latent(micro_images)
        assert torch.allclose(q.restore_latent(micro_images), ref, atol=1e-4)


def test_learned_bounds_are_what_the_saved_quantizer_uses(micro_model, micro_images, micro_calib):
    model = copy.deepcopy(micro_model)
    plan = BitPlan.uniform(model.quant_targets(), 4, 4)
    wrap_model(model, QuantScheme().layout(model, model.quant_targets(), plan))
    calibrate_weights(model)
    set_activation_ranges(model, micro_calib)
    with learnable_bounds(model) as params, torch.no_grad():
        for p in params:
            p.mul_(0.9)
        inside = model.restore(micro_images)
    with torch.no_grad():
        assert torch.allclose(model.restore(micro_images), inside, atol=1e-6)
    assert not any("bound" in n for n, _ in model.named_parameters())


def test_passionsr_beats_maxmin_on_an_outlier_channel_layer():
    from tests.test_transform_baselines import OutlierBundle

    torch.manual_seed(0)
    fp = OutlierBundle().eval()
    imgs = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    calib = collect_calibration(copy.deepcopy(fp), imgs, 2, 64)
    test = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    plan = BitPlan.uniform(fp.quant_targets(), 8, 6)
    err = {}
    with torch.no_grad():
        ref = fp.restore(test)
    for m, opts in (("maxmin", {}), ("passionsr", {"let_steps": 30, "lbq_steps": 30})):
        q = quantize_bundle(m, fp, calib, plan, opts).model
        with torch.no_grad():
            err[m] = ((q.restore(test) - ref) ** 2).mean().item()
    assert err["passionsr"] < 0.5 * err["maxmin"], err


def test_efficientdm_lora_lowers_the_distillation_loss_and_merges_exactly(
    micro_model, micro_images, micro_calib
):
    from quantface.quant.distill import DistillConfig, distill, fp_targets

    model = copy.deepcopy(micro_model)
    plan = BitPlan.uniform(model.quant_targets(), 3, 8)  # weight error dominates
    wrap_model(model, QuantScheme().layout(model, model.quant_targets(), plan))
    calibrate_weights(model)
    set_activation_ranges(model, micro_calib)
    model.requires_grad_(False)
    targets = fp_targets(micro_model, micro_images, 4)
    layers = {n: model.get_submodule(n) for n in smoothable(model, plan)}
    ranks = {n: 4 for n in layers}
    with weight_lora(layers, ranks) as loras:
        # on the dequantized integer weight B A must move a weight half a step to change a code
        groups = [
            {
                "params": list(lo.parameters()),
                "lr": 0.2 * layers[n].weight_quantizer.scale.mean().item(),
            }
            for n, lo in loras.items()
        ]
        curve = distill(model, micro_images, targets, groups, DistillConfig(30, 1e-3, 4))
        with torch.no_grad():
            inside = model.restore(micro_images)
    assert curve[-1] < 0.7 * curve[0], curve[:3] + curve[-3:]
    with torch.no_grad():
        assert torch.equal(model.restore(micro_images), inside)  # LoRA merged into W
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_qalora_adds_the_update_to_the_dequantized_integer_weight():
    """EfficientDM's QuantModule_intnlora: Q_w(deq(W_int) + B A), Δ the (learned) quantizer's."""
    _, q, _ = _layer(bits=3)
    wq = q.weight_quantizer
    codes = weight_codes(wq, q.weight)
    with learnable_scales(q, "weight") as scales, weight_lora({"l": q}, {"l": 2}) as loras:
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            loras["l"].b.copy_(torch.randn(loras["l"].b.shape, generator=g) * wq.scale.mean())
            scales[0].mul_(1.1)  # a learned Δ moves deq(W_int) too
        delta = loras["l"].delta().detach()
        inside = q.quantized_weight().detach()
        official = q.quantize_weight(dequantize(codes, wq) + delta).detach()
        assert torch.equal(inside, official)
        assert not torch.allclose(inside, q.quantize_weight(q.weight + delta))  # Q(W + B A)
        deq = dequantize(codes, wq).detach()
    assert torch.allclose(q.weight, deq + delta)  # merged on the dequantized integer weight
    assert torch.equal(q.quantized_weight(), inside)


def test_lora_on_the_fp_weight_is_the_ablation_q_of_w_plus_ba():
    """`lora_on: weight` (config/baseline_fixes): Q_w(W + B A), merged as W + B A."""
    _, q, _ = _layer(bits=3)
    w0 = q.weight.detach().clone()
    with weight_lora({"l": q}, {"l": 2}, on_codes=False) as loras:
        with torch.no_grad():
            loras["l"].b.normal_(0, q.weight_quantizer.scale.mean().item())
        delta = loras["l"].delta().detach()
        assert torch.equal(q.quantized_weight().detach(), q.quantize_weight(w0 + delta))
    assert torch.allclose(q.weight, w0 + delta)
    with pytest.raises(ConfigError, match="lora_on"):
        quantize_bundle("efficientdm", None, None, None, {"lora_on": "fp"})


def test_learned_activation_zero_point_moves_stays_integer_and_is_saved():
    fp, q, x = _layer(bits=8)
    q.act_quantizer.spec = QuantSpec(4, channel_dim=-1)
    q.act_quantizer.set_range(0.4 * x.min(), x.max())  # the negative side clips hard
    with torch.no_grad():
        y = fp(x)
    inputs, targets = [((x,), {})], [y]
    z0 = q.act_quantizer.zero_point.clone()
    before = block_error(q, inputs, targets)
    with learnable_zero_points(q, "act") as zeros:
        assert len(zeros) == 1
        reconstruct(q, inputs, targets, [{"params": zeros}], ReconConfig(40, 0.2))
        with torch.no_grad():
            inside = q(x)
    z = q.act_quantizer.zero_point
    assert z > z0 and torch.equal(z, z.round()), (z0, z)
    assert block_error(q, inputs, targets) < 0.9 * before
    with torch.no_grad():
        assert torch.equal(q(x), inside)  # the saved integer z is what the last step used
    assert "zero_param" not in dict(q.act_quantizer.named_parameters())


def test_efficientdm_trains_zero_points_and_lora_unclipped_but_not_its_8_bit_layers(
    micro_model, micro_calib, monkeypatch
):
    import baselines.efficientdm as edm

    trained, eight_bit, lora_lrs = [], [], []
    real = edm.distill
    # the official set_first_last_layer_to_8bit layers, as named in the diffusers UNet
    eight_bit_layers = {
        "unet.time_embedding.linear_1",
        "unet.time_embedding.linear_2",
        "unet.conv_in",
        "unet.conv_out",
    }

    def spy(model, images, targets, groups, cfg, after_step=None):
        assert cfg.clip_grad_norm is None  # the official loop does not clip gradients
        params = {id(p) for g in groups for p in g["params"]}
        # the code's total LoRA update (lr mean(step)/2500 over 16,000 steps) in cfg.steps
        expected_lr = {}
        for n, m in model.named_modules():
            if isinstance(m, QuantLayerMixin):
                own = {id(p) for p in m.parameters()} & params
                lora = "quantized_weight" in vars(m)
                if n in eight_bit_layers:  # plain QuantModules in the code: nothing trained
                    eight_bit.append(not own and not lora)
                else:
                    trained.append(id(m.act_quantizer.zero_param) in params and lora)
                    scale = m.weight_quantizer.scale.detach().mean().item()
                    expected_lr[n] = scale / 2500 * 16000 / cfg.steps
        lora_lrs.append((sorted(g["lr"] for g in groups[: len(expected_lr)]), expected_lr))
        return real(model, images, targets, groups, cfg, after_step)

    monkeypatch.setattr(edm, "distill", spy)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    quantize_bundle("efficientdm", micro_model, micro_calib, plan, FAST["efficientdm"])
    assert trained and all(trained)
    assert eight_bit and all(eight_bit)
    ((got, expected),) = lora_lrs
    assert got == pytest.approx(sorted(expected.values()), rel=1e-6)


@torch.no_grad()
def test_block_capture_stops_the_forward_at_the_block(micro_model, micro_calib, micro_images):
    """As Q-Diffusion's `save_inp_oup_data` (a hook raising StopForwardException), capturing a
    block's input runs the network only up to the block, its output only through it: nothing
    after it runs, and what is captured is what a full forward feeds it and gets from it."""
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    micro_model = quantize_bundle("maxmin", micro_model, micro_calib, plan, {}).model
    blocks = find_blocks(micro_model, micro_images)
    block = blocks[len(blocks) // 2].name
    later = blocks[-1].name
    seen, calls = {}, []
    mod = micro_model.get_submodule(block)

    def pre(m, a):
        seen.setdefault("in", a[0].clone())

    def post(m, a, o):
        seen.setdefault("out", o)

    h1 = mod.register_forward_pre_hook(pre)
    h2 = mod.register_forward_hook(post)
    micro_model.restore(micro_images[:2])
    h1.remove()
    h2.remove()
    h3 = micro_model.get_submodule(later).register_forward_pre_hook(
        lambda m, a: calls.append(1) and None
    )
    inputs = capture(micro_model, block, micro_images[:2], 2, "input")
    outputs = capture(micro_model, block, micro_images[:2], 2, "output")
    h3.remove()
    assert not calls  # the last unit never ran: both captures stopped at the block
    assert torch.equal(inputs[0][0][0], seen["in"])
    out = seen["out"] if isinstance(seen["out"], torch.Tensor) else seen["out"][0]
    assert torch.equal(outputs[0], out)


def test_qdiffusion_max_units_reconstructs_an_evenly_spaced_subset(
    micro_model, micro_calib, monkeypatch
):
    """A scale run's cut: `max_units: 3` reconstructs 3 units spread over the whole order (the
    first, one in the middle, one late) and says so in the plan notes; by default every unit."""
    import baselines.qdiffusion as qd

    done, found = [], []
    real_find = qd.find_blocks

    def find(model, images, *types):
        found[:] = [b.name for b in real_find(model, images, *types)]
        return real_find(model, images, *types)

    monkeypatch.setattr(qd, "find_blocks", find)
    monkeypatch.setattr(
        qd.QDiffusion, "_reconstruct_unit", lambda self, m, fp, blk, *a: done.append(blk.name)
    )
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    notes = quantize_bundle(
        "qdiffusion", micro_model, micro_calib, plan, {**FAST["qdiffusion"], "max_units": 3}
    ).notes
    step = len(found) / 3
    assert len(found) > 6 and done == [found[int(i * step)] for i in range(3)]
    assert f"3 of {len(found)} units" in notes["qdiffusion"]
    done.clear()
    notes = quantize_bundle("qdiffusion", micro_model, micro_calib, plan, FAST["qdiffusion"]).notes
    assert done == found and "qdiffusion" not in notes


def test_one_pass_block_outputs_equal_block_by_block_captures_within_the_budget(
    micro_model, micro_images, micro_calib
):
    """Q-Diffusion's FP targets from one forward per batch are bitwise the early-stopped
    per-block captures; blocks past the memory budget are left to the per-block path."""
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    micro_model = quantize_bundle("maxmin", micro_model, micro_calib, plan, {}).model
    names = [b.name for b in find_blocks(micro_model, micro_images)]
    every = capture_outputs(micro_model, names, micro_images, 2, 1 << 30)
    assert list(every) == names and len(names) > 3
    for name in names:
        one = capture(micro_model, name, micro_images, 2, "output")
        assert len(one) == len(every[name]) == 2
        assert all(torch.equal(a, b) for a, b in zip(one, every[name], strict=True)), name
    first = sum(t.numel() * t.element_size() for t in every[names[0]])
    some = capture_outputs(micro_model, names, micro_images, 2, first)
    assert list(some) == names[:1]
