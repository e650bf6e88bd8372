"""The bit-allocation integer program and the per-layer sensitivity it is fed with."""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager

import pytest
import torch

from quantface.errors import ConfigError
from quantface.methods.allocation import (
    AllocationProblem,
    _StagedRunner,
    activation_elements,
    activation_sites,
    combine_costs,
    layer_sensitivity,
    solve_allocation,
    weighted_average,
)
from quantface.quant.apply import calibrate_weights, set_activation_ranges
from quantface.quant.calibration import collect_calibration
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, UniformQuantizer
from quantface.quant.scheme import QuantScheme
from quantface.quant.wrap import wrap_model

CANDIDATES = (3, 4, 5, 6)


def _error(sensitivity: float, bits: int) -> float:
    """A quantization-error-like cost: halves with every extra bit."""
    return sensitivity * 4.0 ** (-bits)


def _problem(sens: dict[str, float], weight: dict[str, float], budget: float):
    cost = {n: {b: _error(s, b) for b in CANDIDATES} for n, s in sens.items()}
    return AllocationProblem(cost, weight, budget)


def _brute_force(problem: AllocationProblem) -> tuple[float, dict[str, int]]:
    layers = problem.layers
    best = (float("inf"), {})
    for combo in itertools.product(CANDIDATES, repeat=len(layers)):
        bits = dict(zip(layers, combo, strict=True))
        if weighted_average(bits, problem.weight) <= problem.budget + 1e-9:
            obj = sum(problem.cost[n][b] for n, b in bits.items())
            best = min(best, (obj, bits), key=lambda t: t[0])
    return best


def test_ilp_finds_the_brute_force_optimum_and_respects_the_budget():
    sens = {"a": 1.0, "b": 30.0, "c": 5.0, "d": 0.2}
    weight = {"a": 4.0, "b": 1.0, "c": 2.0, "d": 3.0}
    problem = _problem(sens, weight, budget=4.0)
    result = solve_allocation(problem)
    best_obj, best_bits = _brute_force(problem)
    assert result.status == "OPTIMAL"
    assert result.objective == pytest.approx(best_obj, rel=1e-6)
    assert result.bits == best_bits
    assert result.average_bits <= 4.0 + 1e-9
    assert result.n_variables == 4 * len(CANDIDATES)


def test_a_more_sensitive_layer_gets_more_bits():
    weight = dict.fromkeys("abcd", 1.0)
    base = solve_allocation(_problem(dict.fromkeys("abcd", 1.0), weight, 4.0)).bits
    sharper = solve_allocation(_problem({"a": 1.0, "b": 1.0, "c": 1.0, "d": 200.0}, weight, 4.0))
    assert sharper.bits["d"] > base["d"]
    assert sharper.average_bits <= 4.0


def test_an_infeasible_budget_names_the_smallest_average():
    with pytest.raises(ConfigError, match=r"budget=2.5 is infeasible.*3\.000"):
        solve_allocation(_problem({"a": 1.0}, {"a": 1.0}, budget=2.5))


def test_combine_costs_normalises_each_term_and_lam_selects_it():
    eq = {"a": {3: 4.0, 4: 2.0}}
    ep = {"a": {3: 0.5, 4: 0.1}}
    assert combine_costs(eq, ep, 1.0)["a"] == {3: 1.0, 4: 0.5}
    assert combine_costs(eq, ep, 0.0)["a"] == {3: 1.0, 4: pytest.approx(0.2)}
    with pytest.raises(ConfigError, match="lam"):
        combine_costs(eq, ep, 1.5)


def test_set_bits_keeps_the_clipping_range():
    q = UniformQuantizer(QuantSpec(4))
    q.set_range(torch.tensor(-1.0), torch.tensor(3.0))
    lo, hi = q.clip_range()
    q.set_bits(8)
    q.set_bits(4)
    assert torch.allclose(torch.stack(q.clip_range()), torch.stack([lo, hi]))
    assert lo.item() == pytest.approx(-1.0, abs=0.2) and hi.item() == pytest.approx(3.0, abs=0.2)


def _quantized_micro(micro_model, micro_images):
    model = copy.deepcopy(micro_model)
    plan = BitPlan.uniform(model.quant_targets(), 4, 4)
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 64)
    wrap_model(model, QuantScheme().layout(model, model.quant_targets(), plan))
    calibrate_weights(model)
    set_activation_ranges(model, calib)
    return model


def _one_per_stage(model) -> list[str]:
    names = list(activation_sites(model))
    picks = []
    for prefix in ("vae.encoder.", "unet.down", "unet.up", "vae.decoder."):
        picks.append(next(n for n in names if n.startswith(prefix)))
    picks.append(next(n for n in names if n.endswith("qk_matmul")))
    return picks


@torch.no_grad()
def test_staged_runner_matches_a_full_restoration(micro_model, micro_images):
    model = _quantized_micro(micro_model, micro_images)
    sites = activation_sites(model)
    for q in [q for qs in sites.values() for q in qs] + [
        m.weight_quantizer for m in model.modules() if hasattr(m, "weight_quantizer")
    ]:
        q.mode = "off"
    run = _StagedRunner(model, micro_images, batch_size=2)
    for name in _one_per_stage(model):
        for q in sites[name]:
            q.mode = "quant"
        assert torch.allclose(run(name)[0], run.full(), atol=1e-6), name
        for q in sites[name]:
            q.mode = "off"


@torch.no_grad()
def test_sensitivity_falls_with_bits_and_leaves_the_model_as_it_was(micro_model, micro_images):
    model = _quantized_micro(micro_model, micro_images)
    before = model.restore(micro_images)

    def one_minus_corr(a, b):
        return 1.0 - torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    only = _one_per_stage(model)
    eq, ep = layer_sensitivity(model, micro_images, (3, 6), one_minus_corr, 4, only)
    assert set(eq) == set(only)
    assert all(eq[n][3] > eq[n][6] for n in eq)
    assert all(v >= 0 for row in ep.values() for v in row.values())
    assert torch.equal(model.restore(micro_images), before)  # modes, bits and ranges restored
    counts = activation_elements(model, list(activation_sites(model)))
    assert all(c > 0 for c in counts.values())


@torch.no_grad()
def test_sensitivity_measures_every_candidate_of_a_site_in_one_pass(
    micro_model, micro_images, monkeypatch
):
    """One staged pass per (site, batch), each candidate a copy of the images quantized at its
    own width, gives what one pass per candidate gives (up to a larger batch's rounding)."""
    from quantface.models.staged import StagedRestore

    model = _quantized_micro(micro_model, micro_images)
    only = _one_per_stage(model)

    def mse_as_distance(a, b):
        return float((a - b).pow(2).mean())

    sites = activation_sites(model)
    weight_qs = [m.weight_quantizer for m in model.modules() if hasattr(m, "weight_quantizer")]
    for q in [q for qs in sites.values() for q in qs] + weight_qs:
        q.mode = "off"
    single = _StagedRunner(model, micro_images, batch_size=4)
    reference = single.full()
    expected = {}
    for name in only:  # the one-candidate-at-a-time measurement, written out
        expected[name] = {}
        for bits in (3, 6):
            for q in sites[name]:
                q.set_bits(bits)
                q.mode = "quant"
            expected[name][bits] = float((single(name)[0] - reference).pow(2).mean())
            for q in sites[name]:
                q.mode = "off"
    model = _quantized_micro(micro_model, micro_images)  # calibrated again: bits as they were
    passes = []
    run = StagedRestore.run
    monkeypatch.setattr(
        StagedRestore, "run", lambda self, s, i: passes.append(s) or run(self, s, i)
    )
    eq, ep = layer_sensitivity(model, micro_images, (3, 6), mse_as_distance, 4, only)
    assert passes == only  # micro_images is one batch: one pass per site, not per candidate
    for name in only:
        for bits in (3, 6):
            assert eq[name][bits] == pytest.approx(expected[name][bits], rel=1e-4, abs=1e-9)
            assert ep[name][bits] == pytest.approx(eq[name][bits], rel=1e-6)


@torch.no_grad()
def test_a_site_whose_batch_does_not_split_is_measured_one_candidate_at_a_time(
    micro_model, micro_images, monkeypatch
):
    """The fallback (a quantizer input whose dim 0 is not images x copies) gives the numbers of
    the one-pass measurement, up to a larger batch's rounding."""
    from quantface.methods import allocation

    only = _one_per_stage(_quantized_micro(micro_model, micro_images))

    def mse_as_distance(a, b):
        return float((a - b).pow(2).mean())

    model = _quantized_micro(micro_model, micro_images)
    batched, _ = layer_sensitivity(model, micro_images, (3, 6), mse_as_distance, 4, only)

    @contextmanager
    def never_splits(qs, candidates):
        raise allocation._NotPerImage
        yield

    monkeypatch.setattr(allocation, "_bits_per_copy", never_splits)
    model = _quantized_micro(micro_model, micro_images)
    single, _ = layer_sensitivity(model, micro_images, (3, 6), mse_as_distance, 4, only)
    assert single.keys() == batched.keys()
    for name in only:
        for bits in (3, 6):
            assert single[name][bits] == pytest.approx(batched[name][bits], rel=1e-4, abs=1e-9)
    assert torch.equal(
        model.restore(micro_images),
        _quantized_micro(micro_model, micro_images).restore(micro_images),
    )
