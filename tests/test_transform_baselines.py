"""SmoothQuant, QuaRot and SVDQuant on the micro model and on a planted-outlier layer."""

import copy

import pytest
import torch
from torch import nn

from quantface.methods.pipeline import quantize_bundle, wrapped_copy
from quantface.models.base import RestorerBundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import current_layout, plan_of
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import cost_table
from quantface.quant.layers import QuantLayerMixin
from quantface.quant.plan import BitPlan
from quantface.quant.wrap import set_quant_mode

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
        q = quantize_bundle(method, micro_model, micro_calib, plan, {}).model
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
        models[m] = quantize_bundle(m, fp, calib, plan, {}).model
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
        quantize_bundle("smoothquant", micro_model, micro_calib, plan, {"alpah": 0.5})


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


class TwoInputBundle(RestorerBundle):
    """Two quantized Linears: unet.0 reads an input with one huge channel, unet.1 a flat input
    through a weight with one huge input column (the outlier is on the other side)."""

    name = "two_inputs"

    def __init__(self):
        super().__init__({"image_size": 8})
        g = torch.Generator().manual_seed(0)
        self.embedder = nn.ModuleList([nn.Linear(3, 32), nn.Linear(3, 32)])
        self.unet = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
        self.vae = nn.Identity()
        with torch.no_grad():  # zero biases: a default init would read the global RNG (test order)
            for e in self.embedder:
                e.weight.copy_(torch.randn(32, 3, generator=g))
                e.bias.zero_()
            self.embedder[0].weight[5] *= 60.0
            for lin in self.unet:
                lin.weight.copy_(torch.randn(32, 32, generator=g) * 0.2)
                lin.bias.zero_()
            self.unet[1].weight[:, 9] *= 40.0

    def restore(self, lq, clamp=True):
        x = lq.flatten(2).transpose(1, 2) - 0.5
        return self.unet[0](self.embedder[0](x)) + self.unet[1](self.embedder[1](x))


def _svdquant_search():
    """SVDQuant's prepared (wrapped, unsmoothed) TwoInputBundle at W4A4 and its calibration."""
    from baselines.svdquant import SVDQuant, SVDQuantOptions

    fp = TwoInputBundle().eval()
    imgs = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    calib = collect_calibration(copy.deepcopy(fp), imgs, 2, 64)
    plan = BitPlan.uniform(fp.quant_targets(), 4, 4)
    method = SVDQuant()
    model, *_ = wrapped_copy("svdquant", fp, calib, plan)
    _, groups = method.smoothing_plan(copy.deepcopy(fp), plan, SVDQuantOptions())
    return method, model, groups, calib


@torch.no_grad()
def test_svdquant_searches_the_smoothing_per_layer():
    from baselines.svdquant import search_group_scale, smoothing_candidates
    from quantface.quant.smoothing import calib_absmax

    _, model, groups, calib = _svdquant_search()
    pairs = smoothing_candidates(20)
    assert len(pairs) == 39 and pairs[0] == (0.0, 0.0)  # deepcompressor's beta = -2 grid
    assert (0.05, 0.0) in pairs and (0.95, pytest.approx(0.05)) in pairs
    assert (1.0, 0.0) not in pairs and (0.0, 1.0) not in pairs
    absmax = {n: calib_absmax(calib.input_stats(n)) for g in groups for n in g.layers}
    found = {}
    for g in groups:
        _, pair, errors = search_group_scale(model, g, calib, absmax, pairs)
        found[g.layers[0]] = (pair, errors)
    (pair0, err0), (pair1, err1) = found["unet.0"], found["unet.1"]
    assert pair0 != pair1, found  # one alpha for all layers would fail here
    assert pair0[0] > 0 and err0.min() < 0.5 * err0[0]  # the activation outlier is smoothed
    assert err1.min() < err1[0]  # the weight outlier moves into the activations


@torch.no_grad()
def test_svdquant_search_scores_each_candidate_by_the_real_layer_with_its_branch():
    """The batched score of each candidate equals the quantized layer's output error with the
    SVD branch of that candidate's smoothed weight: the chosen s minimises it."""
    from baselines.svdquant import search_group_scale, smoothing_candidates
    from quantface.quant.apply import calibrate_weights
    from quantface.quant.lowrank import lowrank_split
    from quantface.quant.smoothing import calib_absmax, group_absmax, smooth_group, smoothing_scales

    _, model, groups, calib = _svdquant_search()
    g = next(x for x in groups if x.layers == ("unet.0",))
    absmax = {n: calib_absmax(calib.input_stats(n)) for n in g.layers}
    pairs = smoothing_candidates(10)
    _, pair, errors = search_group_scale(model, g, calib, absmax, pairs)
    x = calib.input_stats("unet.0")["rows"]
    y = nn.functional.linear(x, model.unet[0].weight, model.unet[0].bias)
    brute = []
    for al, be in pairs:
        m = copy.deepcopy(model)
        layer = m.unet[0]
        smooth_group(m, g, smoothing_scales(*group_absmax(m, g, absmax), al, be))
        l1, l2, r = lowrank_split(layer.weight, layer.transform_spec().lowrank)
        layer.lowrank.set_factors(l1, l2)
        layer.weight.copy_(r)
        calibrate_weights(m, "minmax")
        brute.append(((layer(x) - y) ** 2).sum().item())
    brute = torch.tensor(brute, dtype=torch.float64)
    assert torch.allclose(errors, brute, rtol=1e-3), (errors, brute)
    assert pair == pairs[int(brute.argmin())]


@torch.no_grad()
def test_svdquant_branch_refit_lowers_the_output_error_and_stops_early():
    from baselines.svdquant import fit_branch
    from quantface.quant.apply import calibrate_weights

    method, model, groups, calib = _svdquant_search()
    chosen = method.smooth(model, groups, calib, 10)
    layer, rows = model.unet[0], calib.input_stats("unet.0")["rows"]
    s = chosen["unet.0"][0]
    fixed = copy.deepcopy(layer)
    assert len(fit_branch(fixed, rows, s, 6, early_stop=False)) == 6
    errors = fit_branch(layer, rows, s, 100, early_stop=True)
    assert min(errors) < 0.95 * errors[0]  # errors[0] is the one-pass branch
    assert len(errors) < 100 and errors[-1] > min(errors)  # stopped at the first worse iterate
    ref = nn.functional.linear(rows, layer.effective_weight(), layer.bias)  # FP: branch + R, 1/s
    calibrate_weights(layer, "minmax")
    err = ((layer(rows) - ref) ** 2).sum().item()
    assert err == pytest.approx(min(errors), rel=1e-3)  # the best iterate is the one kept


def test_svdquant_branch_layers_follow_the_official_skip_list(micro_model, micro_calib):
    from baselines.svdquant import branch_layers
    from quantface.methods.base import smoothable

    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    chosen = set(branch_layers(micro_model, smoothable(micro_model, plan)))
    leaves = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
    expected = {n for n in plan if n.endswith(leaves)}
    assert chosen == expected  # no resblock, embedding, proj_in/out, sampler or VAE conv
    q = quantize_bundle("svdquant", micro_model, micro_calib, plan, {}).model
    res = q.get_submodule("unet.down_blocks.1.resnets.0.conv1")
    assert not res.transform_spec().active
    ff = q.get_submodule("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    assert ff.transform_spec().lowrank == 3
    qk = q.get_submodule("unet.mid_block.attentions.0.transformer_blocks.0.attn1.qk_matmul")
    assert qk.weight_quantizer.spec.channel_dim == -2  # K^T [B*h, d, M]: per key token


@torch.no_grad()
def test_svdquant_branch_fit_reuses_the_searched_svd_and_gets_the_same_branch(monkeypatch):
    """The search keeps the chosen candidate's factors; the refit starts from them instead of a
    second SVD_r of the same smoothed weight, with the same errors and branch as without them."""
    from baselines.svdquant import fit_branch
    from quantface.quant import lowrank

    method, model, groups, calib = _svdquant_search()
    known = {}
    chosen = method.smooth(model, groups, calib, 10, known)
    assert "unet.0" in known
    layer, rows = model.unet[0], calib.input_stats("unet.0")["rows"]
    s = chosen["unet.0"][0]
    fresh = copy.deepcopy(layer)
    calls = []
    real = lowrank.svd_factors
    monkeypatch.setattr(lowrank, "svd_factors", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = fit_branch(layer, rows, s, 3, early_stop=False, known=known["unet.0"])
    assert len(calls) == 2  # iterates 1 and 2; iterate 0 is the searched SVD
    again = fit_branch(fresh, rows, s, 3, early_stop=False)
    assert len(calls) == 5
    assert reused == pytest.approx(again, rel=1e-4)
    assert torch.allclose(layer.weight, fresh.weight, atol=1e-5)
    rescaled = copy.deepcopy(fresh)
    rescaled.weight.mul_(2.0)  # a later fold changed the weight: the stored factors are stale
    assert not known["unet.0"].matches(rescaled.weight.reshape(rescaled.weight.shape[0], -1))
