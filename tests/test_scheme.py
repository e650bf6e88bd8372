"""Quantizer schemes: each method's native quantizers, and one scheme reaching every site of every
method (the matched protocol's premise: rows differ only in the algorithm)."""

import copy
from dataclasses import replace

import pytest
import torch

from quantface.errors import ConfigError
from quantface.methods.pipeline import quantize_bundle
from quantface.quant.apply import current_layout
from quantface.quant.calibration import collect_calibration
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.registry import METHODS

# one step of every loop: what is checked is where the quantizers come from, not quality
ONE_STEP = {
    "qdiffusion": {"w_iters": 1, "a_iters": 1, "n_samples": 2, "batch_size": 2},
    "passionsr": {"let_steps": 1, "lbq_steps": 1, "batch_size": 2},
    "efficientdm": {"steps": 1, "batch_size": 2},
    "svdquant": {"num_grids": 2, "lowrank_iters": 1},
    "quantface": {"steps": 1, "batch_size": 2, "crop": 16, "crops_per_image": 1},
}
UNIFORM = ["maxmin", "smoothquant", "quarot", "svdquant", "passionsr", "efficientdm"]
UNIFORM += ["qdiffusion", "quantface"]

NATIVE = {  # what the README's method table and each docstring say
    "maxmin": "W per-channel asym (min-max); A per-tensor static asym (min-max)",
    "smoothquant": "W per-channel sym (min-max); A per-tensor static sym (min-max)",
    "quarot": "W per-channel sym (Lp-2.4 search); A per-token dynamic sym",
    "svdquant": "W per-group(64) sym (min-max); A per-group(64) dynamic asym",
    "passionsr": "W per-channel asym (min-max); A per-tensor static asym (min-max)",
    "efficientdm": "W per-channel asym (min-max); A per-tensor static asym (Lp-2.4 search)",
    "qdiffusion": "W per-channel asym (Lp-2.4 search); A per-tensor static asym (Lp-2.4 search)",
    "quantface": "W per-channel asym (Lp-2.4 search); A per-token dynamic asym",
    "quantface_mp": "W per-channel asym (Lp-2.4 search); A per-token dynamic asym",
}


@pytest.fixture
def micro_calib(micro_model, micro_images):
    return collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)


def test_every_method_states_its_native_quantizers():
    assert set(NATIVE) == set(METHODS.names()) - {"fp"}  # the FP reference quantizes nothing
    for name, words in NATIVE.items():
        method = METHODS.get(name)()
        assert method.native_scheme(method.options()).words() == words, name  # the defaults


def _expected(scheme, model, sites, bits):
    out = {}
    for name, kind in sites.items():
        if kind == "matmul":
            out[name] = scheme.matmul_specs(bits, name)
        else:
            c_in = model.get_submodule(name).weight.shape[1]
            out[name] = (scheme.act_spec(bits, kind, c_in), scheme.weight_spec(bits, c_in))
    return out


TENSOR = QuantScheme(exceptions=False)
TOKEN = QuantScheme(act_granularity="token", exceptions=False)
# every method with the default matched scheme; the per-token one where the method's own
# activations are static (its learned or observed ranges must then step aside)
CASES = [(m, TENSOR) for m in UNIFORM]
CASES += [(m, TOKEN) for m in ("maxmin", "smoothquant", "passionsr", "efficientdm")]
TRANSFORMED = {"smoothquant", "quarot", "svdquant", "passionsr", "quantface"}


@pytest.mark.parametrize(
    ("method", "scheme"), CASES, ids=[f"{m}-{s.act_granularity}" for m, s in CASES]
)
def test_a_given_scheme_reaches_every_site(method, scheme, micro_model, micro_images, micro_calib):
    """No method keeps a quantizer of its own (an 8-bit layer, a 16-bit softmax, its native
    granularity) when it is handed a scheme, and its transforms stay (they are the algorithm)."""
    sites = micro_model.quant_targets()
    plan = BitPlan.uniform(sites, 4, 4)
    q = quantize_bundle(
        method, micro_model, micro_calib, plan, ONE_STEP.get(method, {}), scheme
    ).model
    layout = current_layout(q)
    assert set(layout) == set(sites)
    want = _expected(scheme, micro_model, sites, 4)
    got = {n: (lq.a, lq.w) for n, lq in layout.items()}
    assert got == want
    assert any(lq.transform.active for lq in layout.values()) == (method in TRANSFORMED)
    with torch.no_grad():
        assert torch.isfinite(q.restore(micro_images)).all()


def test_a_given_scheme_reaches_the_mixed_precision_method(micro_model, micro_images, micro_calib):
    """QuantFace-MP allocates activation bits itself; every other property is the scheme's."""
    sites = micro_model.quant_targets()
    plan = BitPlan.uniform(sites, 4, 4)
    scheme = QuantScheme(exceptions=False)
    opts = {**ONE_STEP["quantface"], "sensitivity_images": 1, "sensitivity_crop": 16}
    opts["sensitivity_sites"] = 6
    q = quantize_bundle("quantface_mp", micro_model, micro_calib, plan, opts, scheme).model
    want = _expected(scheme, micro_model, sites, 4)
    bits = set()
    for name, lq in current_layout(q).items():
        a, w = want[name]
        assert replace(lq.a, bits=4) == a
        assert (replace(lq.w, bits=4) if lq.kind == "matmul" else lq.w) == w
        bits.add(lq.a.bits)
    assert len(bits) > 1  # the allocation did choose per layer


def test_scheme_refuses_unknown_keys_and_values():
    with pytest.raises(ConfigError, match="unknown key.*act_grain"):
        QuantScheme.from_dict({"act_grain": "tensor"}, "protocols.matched")
    with pytest.raises(ConfigError, match="act_granularity 'pixel'"):
        QuantScheme.from_dict({"act_granularity": "pixel"})
    with pytest.raises(ConfigError, match="weight_symmetric"):
        QuantScheme.from_dict({"weight_symmetric": "yes"})


def test_group_scheme_falls_back_where_one_group_spans_the_inputs():
    """SVDQuant's rule: the largest divisor of C_in up to the group size; a single group is per
    token (activations) and per output channel (weights)."""
    s = QuantScheme(weight_granularity="group", act_granularity="group", group_size=64)
    assert s.act_spec(4, "linear", 320).group_size == 64
    assert s.act_spec(4, "linear", 48).granularity == "token"
    assert s.act_spec(4, "conv2d", 96).group_size == 48
    assert s.weight_spec(4, 48).granularity == "channel" and s.weight_spec(4, 48).channel_dim == 0
    assert s.weight_spec(4, 320).channel_dim == 1
