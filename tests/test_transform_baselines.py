"""SmoothQuant, QuaRot and SVDQuant on the micro model and on a planted-outlier layer."""

import copy

import pytest
import torch
from torch import nn

from quantface.models.base import RestorerBundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import current_layout, plan_of
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import cost_table
from quantface.quant.layers import QuantLayerMixin, set_quant_mode
from quantface.quant.plan import BitPlan
from quantface.registry import METHODS

METHODS_UNDER_TEST = ["smoothquant", "quarot", "svdquant"]


def _psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


@pytest.fixture
def micro_calib(micro_model, micro_images):
    return collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)


@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
@torch.no_grad()
def test_method_on_micro_model(method, micro_model, micro_images, micro_calib, tmp_path):
    ref = micro_model.restore(micro_images)
    ref_latent = micro_model.restore_latent(micro_images)
    psnr = {}
    for bits in (8, 4):
        plan = BitPlan.uniform(micro_model.quant_targets(), bits, bits)
        q = METHODS.get(method)().quantize(micro_model, micro_calib, plan, {})
        out = q.restore(micro_images)
        psnr[bits] = _psnr(out, ref)
        save_bundle(q, tmp_path / "q.pt", layout=current_layout(q), meta={"method": method})
        back, layout, _ = load_bundle(tmp_path / "q.pt")
        assert layout == current_layout(q)
        assert torch.equal(back.restore(micro_images), out)
        set_quant_mode(q, "off")  # the transforms alone reproduce the FP model
        assert torch.allclose(q.restore_latent(micro_images), ref_latent, atol=1e-4)
    assert psnr[8] > 33 and psnr[8] > psnr[4] + 8
    assert torch.equal(micro_model.restore(micro_images), ref)  # FP model untouched


class OutlierBundle(RestorerBundle):
    """FP embedder with one huge output channel feeding one quantized Linear (token outliers)."""

    name = "outlier"

    def __init__(self):
        super().__init__({"image_size": 8})
        g = torch.Generator().manual_seed(0)
        self.embedder = nn.Linear(3, 32)
        self.unet = nn.Sequential(nn.Linear(32, 32))
        self.vae = nn.Identity()
        with torch.no_grad():
            self.embedder.weight.copy_(torch.randn(32, 3, generator=g))
            self.embedder.weight[5] *= 60.0  # the planted outlier channel
            self.unet[0].weight.copy_(torch.randn(32, 32, generator=g) * 0.2)

    def restore(self, lq, clamp=True):
        return self.unet(self.embedder(lq.flatten(2).transpose(1, 2) - 0.5))


def _outlier_errors(bits):
    torch.manual_seed(0)
    fp = OutlierBundle().eval()
    imgs = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    calib = collect_calibration(copy.deepcopy(fp), imgs, 2, 64)
    test = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = fp.restore(test)
    plan = BitPlan.uniform(fp.quant_targets(), *bits)
    models, err = {}, {}
    for m in ["maxmin", *METHODS_UNDER_TEST]:
        models[m] = METHODS.get(m)().quantize(fp, calib, plan, {})
        with torch.no_grad():
            err[m] = ((models[m].restore(test) - ref) ** 2).mean().item()
    return fp, test, models, err


def test_transforms_beat_maxmin_on_a_planted_outlier_channel():
    _, _, _, err = _outlier_errors((8, 6))  # activation error dominates
    for m in METHODS_UNDER_TEST:
        assert err[m] < 0.5 * err["maxmin"], (m, err)
    _, _, _, err = _outlier_errors((4, 4))  # smoothing alone is not enough at A4 (SVDQuant's point)
    assert err["quarot"] < 0.5 * err["maxmin"], err
    assert err["svdquant"] < 0.5 * err["maxmin"], err


@torch.no_grad()
def test_smoothquant_flattens_the_activation_and_keeps_fp_output():
    fp, test, models, _ = _outlier_errors((8, 8))
    x = fp.embedder(test.flatten(2).transpose(1, 2) - 0.5)
    layer = models["smoothquant"].unet[0]
    assert isinstance(layer, QuantLayerMixin) and layer.transform_spec().scale  # run-time s

    def ratio(t):
        amax = t.abs().flatten(0, -2).amax(0)
        return (amax.max() / amax.median()).item()

    assert ratio(layer.transform_input(x)) < 0.25 * ratio(x)
    set_quant_mode(layer, "off")
    assert torch.allclose(layer(x), fp.unet[0](x), atol=1e-5 * fp.unet[0](x).abs().max())


@torch.no_grad()
def test_quarot_rotates_and_svdquant_residual_is_narrower():
    fp, test, models, _ = _outlier_errors((4, 4))
    rot = models["quarot"].unet[0]
    assert rot.transform_spec().hadamard and rot.act_quantizer.spec.dynamic
    x = fp.embedder(test.flatten(2).transpose(1, 2) - 0.5)
    assert rot.transform_input(x).abs().max() < 0.5 * x.abs().max()  # outlier spread out
    svd = models["svdquant"].unet[0]
    rank = svd.transform_spec().lowrank
    assert rank == 3  # min(32, int(0.1 * 32))
    smoothed = svd.weight + svd.lowrank.matrix()
    assert svd.weight.abs().max() < 0.7 * smoothed.abs().max()
    cost = cost_table(models["svdquant"], plan_of(models["svdquant"]))["total"]
    assert cost["extra_fp_params"] == 2 * 3 * 32 + 32  # branch + run-time scales
    assert cost["lowrank_macs"] == 64 * 3 * 64  # one image: 64 tokens x r x (32+32)


def test_unknown_option_is_named(micro_model, micro_calib):
    from quantface.errors import ConfigError

    plan = BitPlan.uniform(micro_model.quant_targets(), 8, 8)
    with pytest.raises(ConfigError, match="alpah"):
        METHODS.get("smoothquant")().quantize(micro_model, micro_calib, plan, {"alpah": 0.5})


def test_method_options_are_checked_by_the_schema():
    from pathlib import Path

    from quantface.config import load_config, validate_config
    from quantface.errors import ConfigError

    config = load_config(Path(__file__).parents[1] / "config" / "config.yaml")
    assert {"smoothquant", "quarot", "svdquant"} <= set(config["methods"])
    config["method_options"] = {"svdquant": {"rank": 8, "num_grids": 20}, "quarot": {"seed": 1}}
    validate_config(config)
    config["method_options"] = {"quarot": {"clip": 0.9}}
    with pytest.raises(ConfigError, match="method_options.quarot"):
        validate_config(config)
