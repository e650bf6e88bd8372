"""Packed low-bit export: exact bit packing, bit-identical reload, the export CLI, sizes."""

import json
from dataclasses import replace

import pytest
import torch

from quantface.cli import main
from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import save_bundle
from quantface.quant.apply import (
    calibrate_weights,
    current_layout,
    observe_activation_ranges,
    plan_of,
)
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import cost_table
from quantface.quant.pack import (
    dequantize,
    export_bundle,
    load_packed,
    pack_codes,
    packed_nbytes,
    unpack_codes,
    weight_codes,
)
from quantface.quant.plan import BitPlan, LayerBits
from quantface.quant.quantizer import QuantSpec, UniformQuantizer, reduce_range
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform
from quantface.quant.wrap import wrap_model


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
@pytest.mark.parametrize("n", [0, 1, 7, 9, 1001])
def test_pack_unpack_round_trip_is_exact(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits + n))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_int4_is_two_per_byte_low_nibble_first_and_range_is_checked():
    assert pack_codes(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    assert pack_codes(torch.tensor([255, 0]), 8).tolist() == [255, 0]
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([16]), 4)
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([-1]), 4)


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, symmetric=True, granularity="channel"),  # negative codes
        QuantSpec(3, granularity="channel"),
        QuantSpec(5, granularity="group", group_size=4, channel_dim=1),
    ],
)
def test_codes_dequantize_to_the_fake_quantized_weight_bit_for_bit(spec):
    w = torch.randn(6, 8, 3, generator=torch.Generator().manual_seed(0))  # odd shape
    q = UniformQuantizer(spec)
    lo, hi = (w.amin((1, 2), keepdim=True), w.amax((1, 2), keepdim=True))
    if spec.granularity == "group":
        lo, hi = reduce_range(w, spec)
    q.set_range(lo, hi)
    codes = weight_codes(q, w)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    assert torch.equal(dequantize(codes, q), q(w))
    assert torch.equal(q(dequantize(codes, q)), q(w))  # re-quantizing is the identity


def _every_layout_kind(model, images):
    """Mixed bits 2..8 and every transform and quantizer kind a method can save."""
    sites = model.quant_targets()
    widths = [2, 3, 4, 5, 6, 7, 8]
    plan = BitPlan({n: LayerBits(widths[i % 7], widths[(i + 3) % 7]) for i, n in enumerate(sites)})
    layout = QuantScheme().layout(model, sites, plan)
    linears = [n for n, k in sites.items() if k == "linear"]
    convs = [n for n, k in sites.items() if k == "conv2d" and "conv_shortcut" not in n]
    lq = layout[linears[0]]  # QuaRot / SVDQuant / PassionSR transforms, per-token activations
    a_tok = QuantSpec(4, granularity="token", dynamic=True, channel_dim=-1)
    layout[linears[0]] = replace(lq, a=a_tok, transform=InputTransform(True, True, 2, True))
    lq = layout[linears[1]]  # per-group weights and activations (SVDQuant)
    w_grp = QuantSpec(4, granularity="group", group_size=4, channel_dim=1)
    a_grp = QuantSpec(4, granularity="group", group_size=4, dynamic=True, channel_dim=-1)
    layout[linears[1]] = replace(lq, w=w_grp, a=a_grp)
    layout[convs[1]] = replace(layout[convs[1]], split=3)  # Q-Diffusion split quantizer
    layout[convs[2]] = replace(layout[convs[2]], transform=InputTransform(lowrank=3))
    wrap_model(model, layout)
    g = torch.Generator().manual_seed(3)
    for name in (linears[0], convs[2]):
        mod = model.get_submodule(name)
        for p in mod.lowrank.parameters():
            p.data = (torch.randn(p.shape, generator=g) * 0.1).half().float()
    mod = model.get_submodule(linears[0])
    mod.input_scale.uniform_(0.5, 2.0, generator=g)
    mod.input_shift.normal_(generator=g)
    mod.shift_bias.normal_(generator=g)
    mod.input_hadamard.signs.copy_(torch.randint(0, 2, mod.input_hadamard.signs.shape) * 2 - 1)
    calibrate_weights(model)
    observe_activation_ranges(model, images)
    return model


@torch.no_grad()
def test_packed_export_reloads_bit_identical_for_every_layout_kind(
    micro_model, micro_images, tmp_path
):
    model = _every_layout_kind(micro_model, micro_images)
    out = model.restore(micro_images)
    sizes = export_bundle(model, current_layout(model), tmp_path / "m.safetensors", {"m": 1})
    assert set(sizes) == {"blob.codes", "blob.float32", "blob.float16", "index", "file"}
    back, layout, meta = load_packed(tmp_path / "m.safetensors")
    assert layout == current_layout(model) and meta == {"m": 1}
    assert torch.equal(back.restore(micro_images), out)


@torch.no_grad()
def test_export_cli_round_trip_and_size_matches_the_cost_model(micro_model, micro_images, tmp_path):
    sites = micro_model.quant_targets()
    plan = BitPlan.uniform(sites, 4, 4)
    calib = collect_calibration(micro_model, micro_images, 2, 64)
    q = quantize_bundle("maxmin", micro_model, calib, plan, {}).model
    save_bundle(q, tmp_path / "model.pt", layout=current_layout(q), meta={"method": "maxmin"})
    packed, report = tmp_path / "exp" / "model.safetensors", tmp_path / "exp" / "size.json"
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(packed),
                 "--report", str(report), "--verify"]) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["bit_identical"] and r["disk_bytes"] == packed.stat().st_size
    assert r["cost_model_bytes"] == cost_table(q, plan_of(q))["total"]["size_bytes"]
    payload = sum(v for k, v in r["parts_bytes"].items() if k.startswith("blob."))
    n_packed = len([n for n, k in sites.items() if k != "matmul"])
    assert abs(payload - r["cost_model_bytes"]) <= n_packed  # <= 1 byte of padding per tensor
    # the micro model is 0.2 MB, so the index is ~4 % of it; on the default tiny model ~1 %
    assert r["disk_over_cost_model"] < 1.06
    # an FP model is refused with one line and exit code 2
    save_bundle(micro_model, tmp_path / "fp.pt")
    assert main(["export", "--model", str(tmp_path / "fp.pt"), "--out", str(packed),
                 "--report", str(report)]) == 2  # fmt: skip
