from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch import nn

from quantface.errors import ConfigError
from quantface.methods.pipeline import quantize_bundle
from quantface.models.base import RestorerBundle
from quantface.models.sd21 import sd21_osdface
from quantface.quant.apply import calibrate_weights
from quantface.quant.cost import cost_table
from quantface.quant.hadamard import hadamard_ops
from quantface.quant.plan import BitPlan, LayerBits, parse_bits
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform
from quantface.quant.wrap import quantizers, wrap_model

PARTS = ("unet", "vae", "embedder")


@pytest.mark.parametrize(
    "label,w,a,mixed",
    [("w4a4", 4, 4, False), ("w6a6", 6, 6, False), ("w4a6", 4, 6, False), ("mp4", 4, 4, True)],
)
def test_parse_bits(label, w, a, mixed):
    s = parse_bits(label)
    assert (s.w_bits, s.a_bits, s.mixed) == (w, a, mixed)


@pytest.mark.parametrize("label", ["w4a", "w0a4", "4a4", "W4A4", "mp", "w4a4x", "w99a4"])
def test_malformed_bits_are_config_errors(label):
    with pytest.raises(ConfigError, match=label):
        parse_bits(label)


def test_bitplan_json_round_trip(tmp_path):
    plan = BitPlan.uniform(["a", "b"], 4, 6).with_overrides({"b": LayerBits(8, 8)}, "kept 8-bit")
    plan.save(tmp_path / "plan.json")
    back = BitPlan.load(tmp_path / "plan.json")
    assert dict(back) == dict(plan) and back.notes == {"b": "kept 8-bit"}
    with pytest.raises(KeyError):
        plan.with_overrides({"zzz": LayerBits(8, 8)}, "x")


class TwoLayer(RestorerBundle):
    """A hand-checkable bundle: a 3x3 conv (3->4 channels) then a linear (4->5) over pixels."""

    name = "twolayer"

    def __init__(self):
        super().__init__({"image_size": 6})
        self.unet = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
        self.vae = nn.Sequential(nn.Linear(4, 5))
        self.embedder = nn.Identity()

    def restore(self, lq, clamp=True):
        y = self.unet(lq)  # [1, 4, 6, 6]
        return self.vae(y.flatten(2).transpose(1, 2))  # [1, 36, 5]


def test_cost_matches_hand_computation():
    model = TwoLayer()
    plan = BitPlan.uniform(model.quant_targets(), 4, 6)
    wrap_model(model, QuantScheme().layout(model, model.quant_targets(), plan))
    calibrate_weights(model)
    for q in (model.unet[0].act_quantizer, model.vae[0].act_quantizer):
        q.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    cost = cost_table(model, plan)
    rows = {r["layer"]: r for r in cost["rows"]}
    conv_macs = 6 * 6 * 4 * 3 * 3 * 3  # out pixels x C_out x C_in x kh x kw
    lin_macs = 36 * 5 * 4
    assert rows["unet.0"]["macs"] == conv_macs and rows["vae.0"]["macs"] == lin_macs
    assert rows["unet.0"]["bops"] == conv_macs * 4 * 6
    # conv: 108 weights at 4 bit + 4 per-channel (scale, zero) + 1 act (scale, zero) at 32 bit
    assert rows["unet.0"]["param_bits"] == 108 * 4 + (4 * 2 + 2) * 32
    total = cost["total"]
    biases = 4 + 5
    expected_bits = (108 + 20) * 4 + biases * 32 + ((4 + 1) * 2 + (5 + 1) * 2) * 32
    assert total["param_bits"] == expected_bits
    assert total["fp32_param_bits"] == (108 + 20 + biases) * 32
    assert total["bops"] == (conv_macs + lin_macs) * 24
    assert total["bops_reduction"] == pytest.approx(1 - 24 / 1024)


def test_transform_costs_match_hand_computation():
    """A low-rank branch (r=1), a run-time scale and an online Hadamard on the 4->5 Linear."""
    model = TwoLayer()
    plan = BitPlan.uniform(model.quant_targets(), 4, 6)
    layout = QuantScheme().layout(model, model.quant_targets(), plan)
    layout["vae.0"] = replace(layout["vae.0"], transform=InputTransform(True, True, 1))
    wrap_model(model, layout)
    calibrate_weights(model)
    for q in (model.unet[0].act_quantizer, model.vae[0].act_quantizer):
        q.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    cost = cost_table(model, plan)
    lin = {r["layer"]: r for r in cost["rows"]}["vae.0"]
    positions = 36
    lowrank_params = 1 * 4 + 5 * 1  # down [1, 4], up [5, 1], stored at 16 bit
    assert lin["extra_fp_params"] == lowrank_params + 4 + 4  # + 4 scales + 4 signs
    assert lin["param_bits"] == 20 * 4 + (5 * 2 + 2) * 32 + lowrank_params * 16 + 4 * 32 + 4
    assert lin["lowrank_macs"] == positions * 1 * (4 + 5)
    assert lin["bops"] == positions * 5 * 4 * 24 + positions * 9 * 16 * 16
    assert lin["online_scale_ops"] == positions * 4
    assert lin["online_hadamard_ops"] == positions * hadamard_ops(4)
    total = cost["total"]
    biases = 4 + 5
    plain = (108 + 20) * 4 + biases * 32 + ((4 + 1) * 2 + (5 + 1) * 2) * 32
    assert total["param_bits"] == plain + lowrank_params * 16 + 4 * 32 + 4
    assert total["fp32_param_bits"] == (108 + 20 + biases) * 32  # the branch is not in FP model
    assert total["extra_fp_param_bits"] == lowrank_params * 16 + 4 * 32 + 4


def test_sd21_configs_have_the_published_sizes_and_the_w4_cost():
    """SD-2.1 UNet + VAE from config on the meta device: no weights, shapes only."""
    model = sd21_osdface()
    count = {p: sum(t.numel() for t in getattr(model, p).parameters()) for p in PARTS}
    assert count == {"unet": 865_910_724, "vae": 83_653_863, "embedder": 29_566_912}
    sites = model.quant_targets()
    kinds = Counter(sites.values())
    assert kinds == {"linear": 224, "conv2d": 130, "matmul": 68}
    plan = BitPlan.uniform(sites, 4, 4)
    wrap_model(model, QuantScheme().layout(model, sites, plan))
    calibrate_weights(model)
    for q in quantizers(model).values():
        if not q.calibrated:
            q.set_range(torch.zeros((), device="meta"), torch.ones((), device="meta"))
    total = cost_table(model, plan)["total"]
    assert total["macs"] == 2_217_717_432_320  # UNet + VAE at 512 px (~2,218 GMACs)
    # weights at 4 bit; biases, norms, the VRE and per-channel (scale, zero) at 32 bit
    assert total["param_bits_reduction"] == pytest.approx(0.84742, abs=1e-5)


METHOD_OPTS = {
    "maxmin": {},
    "smoothquant": {},
    "quarot": {"w_clip": False},
    "svdquant": {},
    "passionsr": {"let_steps": 1, "lbq_steps": 1},
    "qdiffusion": {"w_iters": 1, "a_iters": 1, "n_samples": 2, "batch_size": 2},
}


@pytest.mark.parametrize("method", list(METHOD_OPTS))
def test_meta_device_count_equals_the_real_forward(method, micro_model, micro_images, caplog):
    """The cost count's forward runs on meta tensors (shapes only): every MAC and run-time op
    count equals a real forward's, the model's own tensors come back unchanged, and it did not
    fall back. Between them the methods cover every transform (smoothing online and folded,
    shifts, Hadamard, low-rank branches, split shortcuts, 16-bit softmax, dynamic ranges)."""
    import copy
    import logging

    from quantface.quant.calibration import collect_calibration
    from quantface.quant.cost import measure_macs

    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 4, 64)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle(method, micro_model, calib, plan, METHOD_OPTS[method]).model
    sites = q.quant_targets()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    real_extra, meta_extra = {}, {}
    real = measure_macs(q, sites, real_extra, meta=False)
    with caplog.at_level(logging.INFO, logger="quantface.quant.cost"):
        meta = measure_macs(q, sites, meta_extra)
    assert "meta-device count failed" not in caplog.text
    assert meta == real and meta_extra == real_extra
    assert sum(real.values()) > 0
    after = q.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].device == v.device and torch.equal(after[k], v), k
