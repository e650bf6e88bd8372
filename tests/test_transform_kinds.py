"""Each input transform declares what it stores; the cost model and the packer read only that."""

import copy

import pytest
import torch
from torch import nn

from quantface.quant.apply import plan_of
from quantface.quant.cost import cost_table
from quantface.quant.layers import QuantConv2d, QuantLinear, QuantMatMul
from quantface.quant.pack import export_bundle, read_packed
from quantface.quant.quantizer import QuantSpec
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.transforms import (
    HADAMARD,
    LAYER_TRANSFORMS,
    Hadamard,
    Stored,
    stored_tensors,
    transforms_of,
)
from tests.test_transforms import _transformed_oneblock

EVERY = InputTransform(scale=True, hadamard=True, lowrank=2, shift=True)


def _added_keys(fp: nn.Module, q: nn.Module) -> set[str]:
    """State-dict entries the quantized layer has and the float one has not, quantizers aside."""
    quantizer_keys = {k for k in q.state_dict() if "quantizer" in k}
    return set(q.state_dict()) - set(fp.state_dict()) - quantizer_keys


@pytest.mark.parametrize(
    "fp",
    [nn.Linear(8, 6), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 1)],
    ids=["linear", "padded-conv", "pointwise-conv"],
)
def test_every_tensor_a_transform_adds_is_declared(fp):
    cls = QuantConv2d if isinstance(fp, nn.Conv2d) else QuantLinear
    kind = "conv2d" if isinstance(fp, nn.Conv2d) else "linear"
    q = cls.from_float(copy.deepcopy(fp), LayerQuant(kind, QuantSpec(4), QuantSpec(4), EVERY))
    assert transforms_of(q) == list(LAYER_TRANSFORMS)
    assert q.transform_spec() == EVERY
    assert {s.key for s in stored_tensors(q)} == _added_keys(fp, q)
    shift_map = "shift_taps" if isinstance(fp, nn.Conv2d) and fp.padding != (0, 0) else "shift_bias"
    assert shift_map in _added_keys(fp, q)


def test_a_matmul_declares_its_contraction_scale():
    mm = QuantMatMul(LayerQuant("matmul", QuantSpec(8), QuantSpec(8), InputTransform(inner=5)))
    assert mm.transform_spec() == InputTransform(inner=5)
    assert [(s.key, s.tensor.numel(), s.bits) for s in stored_tensors(mm)] == [
        ("inner_scale", 5, 32)
    ]


def test_cost_and_packing_follow_the_transform_declaration(monkeypatch, tmp_path):
    """Declare the Hadamard signs as 32-bit values: the cost model counts 31 more bits per sign
    and the packer stores them raw, though no buffer was renamed (neither knows buffer names)."""
    torch.manual_seed(0)
    model, layout = _transformed_oneblock()
    n_signs = sum(m.input_hadamard.signs.numel() for m in (model.unet[0], model.vae[0]))

    def encodings() -> dict[str, str]:
        export_bundle(model, layout, tmp_path / "m.safetensors")
        index = read_packed(tmp_path / "m.safetensors")[1]["tensors"]
        return {k: e["encoding"] for k, e in index.items() if k.endswith("input_hadamard.signs")}

    declared = cost_table(model, plan_of(model))["total"]["param_bits"]
    assert set(encodings().values()) == {"signs"}

    def as_fp32(self, host):
        return [Stored(f"{HADAMARD.keys[0]}.signs", host.input_hadamard.signs, 32)]

    monkeypatch.setattr(Hadamard, "stored", as_fp32)
    assert cost_table(model, plan_of(model))["total"]["param_bits"] == declared + 31 * n_signs
    assert set(encodings().values()) == {"raw"}
