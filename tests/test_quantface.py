"""QuantFace: rotation-scaling balancing, QD-LoRA and the mixed-precision variant."""

from __future__ import annotations

import copy
import json

import torch

from quantface.config import quantized_cells
from quantface.methods.pipeline import quantize_bundle
from quantface.methods.qdlora import branch_ranks, init_qdlora
from quantface.methods.quantface import train_qdlora
from quantface.methods.quantface_options import QuantFaceOptions
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import current_layout, plan_of
from quantface.quant.calibration import collect_calibration
from quantface.quant.layers import QuantLinear
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import set_quant_mode
from tests.test_transform_baselines import OutlierBundle


def _outlier_setup():
    torch.manual_seed(0)
    fp = OutlierBundle().eval()
    calib = collect_calibration(
        copy.deepcopy(fp), torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)), 2, 64
    )
    test = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    return fp, calib, test


def _balanced(fp, calib, plan, options):
    """QuantFace's balanced, split and calibrated model before any training (0 steps)."""
    return quantize_bundle("quantface", fp, calib, plan, {**options, "steps": 0}).model


@torch.no_grad()
def test_balancing_keeps_fp_output_and_cuts_w4a4_error_on_an_outlier_channel():
    fp, calib, test = _outlier_setup()
    ref = fp.restore(test)
    plan = BitPlan.uniform(fp.quant_targets(), 4, 4)
    err = {}
    for balancing in ("both", "none"):
        opts = {"balancing": balancing, "branches": "none", "act_granularity": "tensor"}
        model = _balanced(fp, calib, plan, opts)
        err[balancing] = (model.restore(test) - ref).pow(2).mean().item()
        if balancing == "both":
            layer = model.unet[0]
            assert layer.transform_spec().hadamard and layer.transform_spec().scale
            set_quant_mode(model, "off")
            assert torch.allclose(model.restore(test), ref, atol=1e-5 * ref.abs().max())
    assert err["both"] < 0.25 * err["none"], err


def test_balanced_statistics_measure_what_the_quantizers_see_after_balancing():
    """The activation-distribution figure's second row: measured on the balanced model, the
    planted outlier channel is gone; with nothing balanced they are the FP statistics again."""
    from quantface.methods.rotation_scaling import balanced_calibration
    from quantface.report.figures import _channel_absmax, outlier_ratio

    fp, calib, _ = _outlier_setup()
    weights = {k: v.clone() for k, v in fp.state_dict().items()}
    site = "unet.0.input"
    ratio = {}
    for mode in ("both", "none"):
        after = balanced_calibration(fp, calib, mode, alpha=0.5, seed=0, batch_size=2)
        assert set(after.stats) == {s for s in calib.stats if s.endswith(".input")}
        assert after.meta["balancing"] == {"mode": mode, "alpha": 0.5, "seed": 0}
        ratio[mode] = outlier_ratio(_channel_absmax(after.stats[site]))
        if mode == "none":
            for key in ("ch_min", "ch_max"):
                assert torch.allclose(after.stats[site][key], calib.stats[site][key])
    assert ratio["none"] > 20 and ratio["both"] < 3, ratio
    assert all(torch.equal(v, weights[k]) for k, v in fp.state_dict().items())  # fp untouched


def test_qdlora_split_reconstructs_the_weight_and_starts_with_a_silent_lora():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    w = lin.weight.detach().clone()
    svd_r, lora_r = branch_ranks(w.shape, 16, 0.1, "both")
    assert (svd_r, lora_r) == (4, 4)
    spec = QuantSpec(4, channel_dim=0, granularity="channel")
    layer = QuantLinear.from_float(
        lin, LayerQuant("linear", QuantSpec(4), spec, InputTransform(lowrank=svd_r + lora_r))
    )
    init_qdlora(layer, svd_r, lora_r, torch.Generator().manual_seed(0))
    assert torch.allclose(layer.weight + layer.lowrank.matrix(), w, atol=1e-6)
    assert torch.count_nonzero(layer.lowrank.up[:, svd_r:]) == 0  # B = 0
    assert torch.count_nonzero(layer.lowrank.down[svd_r:]) > 0  # A ~ N(0, sigma^2)
    assert (
        layer.weight.norm() < w.norm()
    )  # the residual (what gets quantized) lost the top-r energy


def test_qdlora_training_lowers_the_distillation_loss(micro_model, micro_images):
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    opts = QuantFaceOptions(max_rank_fraction=0.25, steps=8, crop=32, batch_size=4)
    model = _balanced(micro_model, calib, plan, {"max_rank_fraction": 0.25})
    with torch.no_grad():
        ref = micro_model.restore(micro_images)

        def loss() -> float:
            return (model.restore(micro_images) - ref).pow(2).mean().item()

    before = loss()
    curve = train_qdlora(model, micro_model, calib, opts)
    assert len(curve) == 8
    assert loss() < before
    assert not any(p.requires_grad for p in model.parameters())


@torch.no_grad()
def test_quantface_mp_allocates_within_budget_and_round_trips(micro_model, micro_images, tmp_path):
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    opts = {"steps": 0, "sensitivity_images": 2, "batch_size": 2}
    result = quantize_bundle("quantface_mp", micro_model, calib, plan, opts)
    model = result.model
    alloc = json.loads(result.notes["allocation"])
    assert alloc["ilp_status"] == "OPTIMAL"
    assert alloc["average_act_bits"] <= 4.0
    final = result.plan
    assert final == plan_of(model, result.notes)
    a_bits = {b.a_bits for b in final.values()}
    assert a_bits <= {3, 4, 5, 6} and len(a_bits) > 1
    assert {b.w_bits for n, b in final.items() if not n.endswith("matmul")} == {4}
    out = model.restore(micro_images)
    save_bundle(model, tmp_path / "mp.pt", layout=current_layout(model), meta={})
    back, layout, _ = load_bundle(tmp_path / "mp.pt")
    assert layout == current_layout(model)
    assert torch.equal(back.restore(micro_images), out)


def test_mixed_methods_pair_only_with_mp_bits():
    cells = quantized_cells(["fp", "maxmin", "quantface", "quantface_mp"], ["w4a4", "mp4"])
    assert cells == [("maxmin", "w4a4"), ("quantface", "w4a4"), ("quantface_mp", "mp4")]
