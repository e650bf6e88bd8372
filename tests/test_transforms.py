"""Smoothing and low-rank helpers, layer input transforms: FP exactness, save/load, cost."""

import copy

import pytest
import torch
from torch import nn

from quantface.models.base import RestorerBundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import calibrate_weights, current_layout, plan_of
from quantface.quant.cost import cost_table
from quantface.quant.hadamard import hadamard_ops, random_signs, randomized_hadamard
from quantface.quant.layers import QuantConv2d, QuantLinear
from quantface.quant.lowrank import capped_rank, lowrank_split
from quantface.quant.quantizer import QuantSpec
from quantface.quant.smoothing import (
    apply_smoothing,
    channel_absmax,
    smoothing_groups,
    smoothing_scales,
)
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import set_quant_mode, unwrap_model, wrap_model


def test_smoothing_scales_formula_and_dead_channels():
    a = torch.tensor([4.0, 0.0, 9.0, 1.0])
    w = torch.tensor([1.0, 2.0, 0.0, 4.0])
    s = smoothing_scales(a, w, 0.5)
    assert torch.isfinite(s).all()
    assert s[0] == pytest.approx(2.0) and s[3] == pytest.approx(0.5)
    assert s[1] == 1.0 and s[2] == 1.0  # no activation / no weight: left alone
    assert torch.allclose(smoothing_scales(a[:1], w[:1], 1.0), torch.tensor([4.0]))
    with pytest.raises(ValueError):
        smoothing_scales(a, w, 1.5)


def test_lowrank_split_is_exact_and_shrinks_the_range():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * 0.05
    w += 3.0 * torch.randn(16, 1, 1, 1) * torch.randn(1, 8, 3, 3)  # a rank-1 outlier direction
    l1, l2, r = lowrank_split(w, 4)
    assert l1.shape == (16, 4) and l2.shape == (4, 72) and r.shape == w.shape
    assert torch.allclose((l1 @ l2).reshape_as(w) + r, w, atol=1e-6)
    assert torch.equal(l1, l1.half().float())  # the branch is 16-bit
    assert r.abs().max() < 0.5 * w.abs().max()
    assert capped_rank(32, 4, 72) == 2 and capped_rank(32, 320, 2880) == 32


def _layer_pair(kind: str, transform: InputTransform):
    torch.manual_seed(1)
    fp = nn.Conv2d(8, 6, 3, padding=1, stride=2) if kind == "conv2d" else nn.Linear(8, 6)
    spec = QuantSpec(4, True, "channel", channel_dim=0)
    lq = LayerQuant(kind, QuantSpec(4), spec, transform)
    q = (QuantConv2d if kind == "conv2d" else QuantLinear).from_float(copy.deepcopy(fp), lq)
    return fp, q


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@torch.no_grad()
def test_transformed_layer_is_exact_in_fp(kind):
    fp, q = _layer_pair(kind, InputTransform(scale=True, hadamard=True, lowrank=2))
    s = torch.rand(8) + 0.5
    signs = random_signs(8, 0)
    w = fp.weight * s.view([1, -1] + [1] * (fp.weight.dim() - 2))
    w = randomized_hadamard(w, signs, dim=1)
    l1, l2, r = lowrank_split(w, 2)
    q.input_scale.copy_(s)
    q.input_hadamard.signs.copy_(signs)
    q.lowrank.set_factors(l1, l2)
    q.weight.copy_(r)
    set_quant_mode(q, "off")
    x = torch.randn(2, 8, 6, 6) if kind == "conv2d" else torch.randn(2, 5, 8)
    assert torch.allclose(q(x), fp(x), atol=1e-5)
    assert torch.allclose(q.effective_weight(), fp.weight, atol=1e-5)
    back = q.to_float()
    assert type(back) is type(fp) and torch.allclose(back(x), fp(x), atol=1e-5)
    assert q.transform_spec() == InputTransform(True, True, 2)


class OneBlock(RestorerBundle):
    """A conv and a linear that both carry every transform, for save/load and cost by hand."""

    name = "oneblock"

    def __init__(self, config=None):
        super().__init__({"image_size": 4})
        self.unet = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
        self.vae = nn.Sequential(nn.Linear(8, 6))
        self.embedder = nn.Identity()

    def restore(self, lq, clamp=True):
        y = self.unet(torch.cat([lq, lq[:, :1]], 1))  # [B, 8, 4, 4]
        return self.vae(y.flatten(2).transpose(1, 2))  # [B, 16, 6]


def _transformed_oneblock():
    model = OneBlock()
    t = InputTransform(scale=True, hadamard=True, lowrank=2)
    layout = {
        "unet.0": LayerQuant("conv2d", QuantSpec(4), QuantSpec(4, True, "channel"), t),
        "vae.0": LayerQuant("linear", QuantSpec(4), QuantSpec(4, True, "channel"), t),
    }
    wrap_model(model, layout)
    with torch.no_grad():
        for i, mod in enumerate((model.unet[0], model.vae[0])):
            mod.input_scale.copy_(torch.rand(mod.weight.shape[1]) + 0.5)
            mod.input_hadamard.signs.copy_(random_signs(mod.weight.shape[1], i))
            mod.lowrank.down.normal_()
            mod.lowrank.up.normal_()
    calibrate_weights(model)
    for mod in (model.unet[0], model.vae[0]):
        mod.act_quantizer.set_range(torch.tensor(-2.0), torch.tensor(2.0))
    return model, layout


def test_transformed_model_round_trips_through_checkpoint_and_unwrap(tmp_path):
    torch.manual_seed(0)
    model, layout = _transformed_oneblock()
    assert current_layout(model) == layout
    x = torch.rand(2, 3, 4, 4)
    save_bundle(model, tmp_path / "m.pt", layout=current_layout(model))
    from quantface.registry import MODELS

    if "oneblock" not in MODELS:
        MODELS.register("oneblock")(OneBlock)
    back, layout2, _ = load_bundle(tmp_path / "m.pt")
    assert layout2 == layout
    with torch.no_grad():
        assert torch.equal(back.restore(x), model.restore(x))
        set_quant_mode(model, "off")
        ref = model.restore(x)
        unwrap_model(model)  # float layers with the transforms multiplied into the weights
        assert torch.allclose(model.restore(x), ref, atol=1e-5)


def test_cost_counts_transform_storage_and_work():
    torch.manual_seed(0)
    model, _ = _transformed_oneblock()
    cost = cost_table(model, plan_of(model))
    rows = {r["layer"]: r for r in cost["rows"]}
    conv, lin = rows["unet.0"], rows["vae.0"]
    # conv: input [1, 4, 4, 4]: 16 positions x 4 channels; output 16 positions x 8 channels
    assert conv["online_scale_ops"] == 16 * 4
    assert conv["online_hadamard_ops"] == 16 * hadamard_ops(4)
    assert conv["lowrank_macs"] == 16 * 2 * (4 * 9 + 8)
    branch = 2 * 4 * 9 + 8 * 2
    assert conv["extra_fp_params"] == branch + 4 + 4  # branch + scales + signs
    # 4-bit weights, per-channel (scale, zero) x 8 + act (scale, zero), branch at 16 bit,
    # scales FP32, signs 1 bit
    assert conv["param_bits"] == 8 * 36 * 4 + (8 * 2 + 2) * 32 + branch * 16 + 4 * 32 + 4
    assert conv["bops"] == conv["macs"] * 16 + conv["lowrank_macs"] * 256
    assert lin["lowrank_macs"] == 16 * 2 * (8 + 6) and lin["online_hadamard_ops"] == 16 * 24
    total = cost["total"]
    lin_branch = 2 * 8 + 6 * 2
    assert total["extra_fp_params"] == branch + 8 + lin_branch + 16
    assert total["lowrank_macs"] == conv["lowrank_macs"] + lin["lowrank_macs"]
    biases = 8 + 6
    assert total["fp32_param_bits"] == (8 * 36 + 6 * 8 + biases) * 32  # the FP model's size
    assert total["param_bits"] == sum(r["param_bits"] for r in rows.values()) + biases * 32


def test_smoothing_groups_and_folding_keep_the_micro_model_exact(micro_model, micro_images):
    model = copy.deepcopy(micro_model)
    sites = {n: k for n, k in model.quant_targets().items() if k != "matmul"}
    groups = smoothing_groups(model, sites)
    by_layer = {n: g for g in groups for n in g.layers}
    blk = "unet.down_blocks.1.attentions.0.transformer_blocks.0"
    assert by_layer[f"{blk}.attn1.to_k"].producer == f"{blk}.norm1"
    assert by_layer[f"{blk}.attn2.to_q"].fold == "norm"
    assert by_layer[f"{blk}.attn2.to_k"].fold == "online"  # fed by the visual prompt
    assert by_layer[f"{blk}.attn1.to_out.0"].producer == f"{blk}.attn1.to_v"
    assert by_layer[f"{blk}.ff.net.2"].fold == "geglu"
    assert by_layer["unet.down_blocks.1.attentions.0.proj_in"].fold == "norm"
    assert by_layer["vae.encoder.mid_block.attentions.0.to_q"].producer.endswith("group_norm")
    assert by_layer["unet.down_blocks.0.resnets.0.conv1"].fold == "online"  # after SiLU
    assert sorted(by_layer) == sorted(sites)
    # fold everything foldable (no run-time scales): the FP output is unchanged
    folded = [g for g in groups if g.fold != "online"]
    g = torch.Generator().manual_seed(0)
    absmax = {
        n: torch.rand(model.get_submodule(n).weight.shape[1], generator=g) * 10 for n in sites
    }
    with torch.no_grad():
        ref = model.restore_latent(micro_images)
        before = {n: p.clone() for n, p in model.named_parameters()}
        apply_smoothing(model, folded, absmax, 0.5)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert any("norm1" in n for n in changed) and any("to_v" in n for n in changed)
        assert torch.allclose(model.restore_latent(micro_images), ref, atol=1e-5)
    wrapped = copy.deepcopy(micro_model)  # online groups need their input_scale buffer
    with pytest.raises(ValueError, match="input_scale"):
        apply_smoothing(wrapped, [x for x in groups if x.fold == "online"][:1], absmax, 0.5)


def test_channel_absmax_is_per_input_channel():
    w = torch.zeros(3, 4, 2, 2)
    w[2, 1, 1, 0] = -5.0
    assert torch.equal(channel_absmax(w), torch.tensor([0.0, 5.0, 0.0, 0.0]))


def _reference_factors(w: torch.Tensor, rank: int) -> torch.Tensor:
    """deepcompressor's branch: the top-r of a full float64 SVD, as the product L1 L2."""
    u, sv, vh = torch.linalg.svd(w.double())
    return (u[:, :rank] * sv[:rank]) @ vh[:rank]


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (40, 40)])
def test_gram_top_r_equals_the_full_float64_svd(shape):
    """The Gram-matrix route gives deepcompressor's full-SVD branch (to FP16 rounding) for tall,
    wide and square weights, batched too; a rank-deficient weight falls back to the full SVD."""
    from quantface.quant.lowrank import svd_factors

    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g) * torch.linspace(3, 0.1, shape[1])
    for rank in (1, 4, 8):
        l1, l2 = svd_factors(w, rank)
        assert l1.shape == (shape[0], rank) and l2.shape == (rank, shape[1])
        ref = _reference_factors(w, rank)
        assert torch.allclose((l1 @ l2).double(), ref, atol=2e-3 * ref.abs().max().item())
    batch = torch.stack([w, 2 * w.flip(0)])
    l1, l2 = svd_factors(batch, 4)
    for k in range(2):
        one = svd_factors(batch[k], 4)
        assert torch.equal(l1[k], one[0]) or torch.allclose(l1[k] @ l2[k], one[0] @ one[1])
    low = torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)
    l1, l2 = svd_factors(low, 4)  # sigma_3 = sigma_4 = 0: not resolved by the Gram matrix
    assert torch.allclose((l1 @ l2).double(), _reference_factors(low, 4), atol=1e-2)


@pytest.mark.parametrize("shape", [(96, 24), (24, 96)])
def test_scaled_candidates_share_one_gram_and_equal_their_own_svd(shape):
    from quantface.quant.lowrank import scaled_svd_factors, svd_factors

    g = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=g)
    s = torch.rand(3, shape[1], generator=g) + 0.2
    gram = w.double().T @ w.double()
    l1, l2 = scaled_svd_factors(w, s, 4, gram if shape[0] >= shape[1] else None)
    for k in range(3):
        ref = _reference_factors(w * s[k], 4)
        assert torch.allclose((l1[k] @ l2[k]).double(), ref, atol=2e-3 * ref.abs().max().item())
        own = svd_factors(w * s[k], 4)
        assert torch.allclose(l1[k] @ l2[k], own[0] @ own[1], atol=1e-3)
