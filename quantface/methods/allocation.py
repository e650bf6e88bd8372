"""Adaptive per-layer activation bit-width allocation as an integer program (QuantFace, part 3).

The paper states the allocation mixes *quantization error* with a *perceptual metric* and is solved
as an integer program under an average-bit budget; it gives no formula. We follow the HAWQ-V3 /
MixDQ formulation, with every constant a config key:

    min  sum_l sum_b x[l,b] * (lam * Eq[l,b] / max Eq + (1 - lam) * Ep[l,b] / max Ep)
    s.t. sum_b x[l,b] = 1                                  for every layer l
         sum_l sum_b x[l,b] * b * c_l <= budget * sum_l c_l   (c_l = activation elements of l)
         [optional] sum_l sum_b x[l,b] * bops[l,b] <= bops_budget
         x binary

Eq[l,b] is the mean squared error of the restored image against the FP model's restored image
when only layer l's activations are quantized at b bits (everything else full precision);
Ep[l,b] is the change of a full-reference perceptual metric (LPIPS in the paper configuration,
SSIM where LPIPS weights are absent) between the same two images. Both terms are normalised by
their maximum so `lam` weighs comparable quantities. `lam = 1` is the "quantization error only"
ablation. The program is solved to proven optimality with python-mip's CBC.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import mip
import torch
from torch import Tensor
from tqdm import tqdm

from quantface.device import module_device
from quantface.errors import ConfigError, NumericsError
from quantface.models.base import RestorerBundle
from quantface.models.staged import StagedRestore
from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.quantizer import UniformQuantizer
from quantface.timing import log_timing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllocationProblem:
    """One binary choice of bits per layer; costs are already combined into one objective."""

    cost: Mapping[str, Mapping[int, float]]  # layer -> bits -> objective contribution
    weight: Mapping[str, float]  # layer -> c_l (activation elements), weights the average
    budget: float  # average bits allowed, weighted by `weight`
    bops: Mapping[str, Mapping[int, float]] | None = None
    bops_budget: float | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.cost)


@dataclass
class Allocation:
    bits: dict[str, int]
    average_bits: float
    objective: float
    status: str
    solve_s: float
    n_variables: int
    n_constraints: int
    log: dict = field(default_factory=dict)


def weighted_average(bits: Mapping[str, int], weight: Mapping[str, float]) -> float:
    total = sum(weight[n] for n in bits)
    return sum(b * weight[n] for n, b in bits.items()) / total


def solve_allocation(problem: AllocationProblem, time_limit_s: float = 60.0) -> Allocation:
    """Solve the program to optimality; an infeasible budget is a ConfigError naming the minimum."""
    layers = problem.layers
    if not layers:
        raise ConfigError("bit allocation: no layers to allocate")
    lowest = sum(min(problem.cost[n]) * problem.weight[n] for n in layers)
    lowest /= sum(problem.weight[n] for n in layers)
    if problem.budget < lowest - 1e-9:
        raise ConfigError(
            f"method_options.quantface_mp.budget={problem.budget} is infeasible: the smallest "
            f"candidate bit-widths average {lowest:.3f}"
        )
    m = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
    m.verbose = 0
    m.threads = 1  # deterministic: same problem, same optimum, same tie-breaking
    x = {(n, b): m.add_var(var_type=mip.BINARY) for n in layers for b in problem.cost[n]}
    m.objective = mip.xsum(problem.cost[n][b] * x[n, b] for n, b in x)
    for n in layers:
        m += mip.xsum(x[n, b] for b in problem.cost[n]) == 1
    total_w = sum(problem.weight[n] for n in layers)
    m += mip.xsum(b * problem.weight[n] * x[n, b] for n, b in x) <= problem.budget * total_w
    if problem.bops is not None and problem.bops_budget is not None:
        m += mip.xsum(problem.bops[n][b] * x[n, b] for n, b in x) <= problem.bops_budget
    t0 = time.perf_counter()
    status = m.optimize(max_seconds=time_limit_s)
    solve_s = time.perf_counter() - t0
    if status == mip.OptimizationStatus.INFEASIBLE:
        raise ConfigError(
            f"bit allocation infeasible with budget {problem.budget} bits"
            + (f" and BOPs budget {problem.bops_budget:.4g}" if problem.bops_budget else "")
        )
    if status != mip.OptimizationStatus.OPTIMAL:
        raise NumericsError(f"bit allocation: solver stopped with status {status.name}")
    bits = {n: b for (n, b), var in x.items() if var.x >= 0.5}
    avg = weighted_average(bits, problem.weight)
    log.info(
        "ILP: %d layers, %d binaries, %d constraints, %s in %.3f s, average %.3f bits",
        len(layers),
        m.num_cols,
        m.num_rows,
        status.name,
        solve_s,
        avg,
    )
    return Allocation(
        bits, avg, float(m.objective_value), status.name, solve_s, m.num_cols, m.num_rows
    )


def combine_costs(
    e_quant: Mapping[str, Mapping[int, float]],
    e_percep: Mapping[str, Mapping[int, float]],
    lam: float,
) -> dict[str, dict[int, float]]:
    """lam * Eq/max(Eq) + (1 - lam) * Ep/max(Ep): two scales made comparable before mixing."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"method_options.quantface_mp.lam must be in [0, 1], got {lam}")

    def peak(e: Mapping[str, Mapping[int, float]]) -> float:
        return max((v for row in e.values() for v in row.values()), default=0.0) or 1.0

    mq, mp = peak(e_quant), peak(e_percep)
    return {
        n: {b: lam * e_quant[n][b] / mq + (1 - lam) * e_percep[n][b] / mp for b in e_quant[n]}
        for n in e_quant
    }


def activation_sites(model: RestorerBundle) -> dict[str, list]:
    """Site name -> its activation quantizers (a matmul has two: both operands are activations)."""
    sites = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLayerMixin):
            sites[name] = [mod.act_quantizer]
        elif isinstance(mod, QuantMatMul):
            sites[name] = [mod.act_quantizer, mod.weight_quantizer]
    return sites


def activation_elements(model: RestorerBundle, sites: Sequence[str]) -> dict[str, float]:
    """c_l: input elements per image that site l quantizes (what an activation bit costs)."""
    counts: dict[str, float] = {}
    handles = []
    for name in sites:

        def hook(mod, args, out, name=name) -> None:
            counts[name] = counts.get(name, 0.0) + float(sum(a.numel() for a in args[:2]))

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            s = model.image_size
            model.restore(torch.zeros(1, 3, s, s, device=module_device(model)))
    finally:
        for h in handles:
            h.remove()
    return counts


PerceptualDistance = Callable[[Tensor, Tensor], float]


def fill_unmeasured(
    errors: Mapping[str, Mapping[int, float]], sites: Sequence[str]
) -> dict[str, dict[int, float]]:
    """Every site's per-bit error; an unmeasured site takes the mean over the measured ones.

    With every site measured (the paper protocol) this is `errors` unchanged, in site order.
    """
    if all(n in errors for n in sites):
        return {n: dict(errors[n]) for n in sites}
    bits = next(iter(errors.values()))
    mean = {b: sum(row[b] for row in errors.values()) / len(errors) for b in bits}
    return {n: dict(errors.get(n, mean)) for n in sites}


class _StagedRunner:
    """Restores the sensitivity images, recomputing only what a quantized site can change
    (quantface/models/staged.py): the full-precision intermediates are taken at once, while
    every quantizer is off, so a decoder site's measurement is a decoder pass.

    With `copies` > 1 each batch is held that many times over (copy k = the k-th candidate
    bit-width, `_bits_per_copy`), so one pass measures every candidate of a site; a pass then
    holds `copies` x `batch_size` images."""

    def __init__(self, model: RestorerBundle, images: Tensor, batch_size: int, copies: int = 1):
        self.copies = copies
        self.batches = list(images.split(batch_size))
        self.stages = StagedRestore(model, [torch.cat([b] * copies) for b in self.batches])
        self.stages.restored()

    def full(self) -> Tensor:
        return torch.cat([self.stages.model.restore(b) for b in self.batches])

    def __call__(self, site: str) -> list[Tensor]:
        """The restored images of every copy, in copy order."""
        outs = [self.stages.run(site, i).chunk(self.copies) for i in range(len(self.batches))]
        return [torch.cat([o[k] for o in outs]) for k in range(self.copies)]


class _NotPerImage(Exception):
    """A site's input batch does not split into the copies (the per-candidate pass is off)."""


@contextmanager
def _bits_per_copy(qs: Sequence[UniformQuantizer], candidates: Sequence[int]) -> Iterator[None]:
    """Each quantizer quantizes copy k of its input batch (dim 0: images, or images x heads
    for attention operands, image-major) at `candidates[k]`, with the clipping range kept as
    `set_bits` keeps it; on exit every quantizer is as it was, in "off" mode."""
    saved = [(q.spec, q.scale, q.zero_point) for q in qs]
    params = []
    for q, (spec, scale, zero) in zip(qs, saved):
        per_bits = []
        for bits in candidates:
            q.set_bits(bits)
            per_bits.append((q.spec, q.scale, q.zero_point))
        q.spec, q.scale, q.zero_point = spec, scale, zero
        params.append(per_bits)

    def forward_for(q: UniformQuantizer, per_bits):
        def forward(x: Tensor) -> Tensor:
            if x.shape[0] % len(per_bits):
                raise _NotPerImage
            outs = []
            for chunk, (spec, scale, zero) in zip(x.chunk(len(per_bits)), per_bits):
                q.spec, q.scale, q.zero_point = spec, scale, zero
                outs.append(UniformQuantizer.forward(q, chunk))
            return torch.cat(outs)

        return forward

    try:
        for q, per_bits in zip(qs, params):
            q.mode = "quant"
            q.forward = forward_for(q, per_bits)
        yield
    finally:
        for q, (spec, scale, zero) in zip(qs, saved):
            del q.forward
            q.mode, q.spec, q.scale, q.zero_point = "off", spec, scale, zero


@torch.no_grad()
def layer_sensitivity(
    model: RestorerBundle,
    images: Tensor,
    candidates: Sequence[int],
    perceptual: PerceptualDistance,
    batch_size: int = 8,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """Eq and Ep for every (activation site, candidate bits), one quantized site at a time.

    `model` is a calibrated quantized bundle; its quantizer modes and bits are restored on exit.
    Everything but the measured site runs in full precision, so each number is that layer's own
    damage at that width (the paper's "only that layer is quantized" protocol). `only` restricts
    the measurement to some sites. One pass per site measures every candidate: the images are
    held once per candidate in the batch and the site quantizes each copy at its own width
    (`_bits_per_copy`); the rest of the network is the same per copy, so each copy is the
    one-candidate measurement (up to float rounding of a larger batch) at a fraction of the
    passes (the default QuantFace-MP job on 2 CPU cores: 55 -> 37 s).
    """
    sites = activation_sites(model)
    every = [q for qs in sites.values() for q in qs]
    if only is not None:
        sites = {n: sites[n] for n in only}
    weight_qs = [m.weight_quantizer for m in model.modules() if isinstance(m, QuantLayerMixin)]
    saved = [(q, q.mode, q.spec, q.scale, q.zero_point) for q in every + weight_qs]

    try:
        for q in every + weight_qs:
            q.mode = "off"
        run = _StagedRunner(model, images, batch_size, copies=len(candidates))
        reference = run.full()
        single: _StagedRunner | None = None  # for a site whose batch does not split per image
        e_quant: dict[str, dict[int, float]] = {}
        e_percep: dict[str, dict[int, float]] = {}
        t0 = time.perf_counter()
        for name, qs in tqdm(sites.items(), desc="sensitivity", disable=None):
            try:
                with _bits_per_copy(qs, candidates):
                    outs = run(name)
            except _NotPerImage:
                single = single or _StagedRunner(model, images, batch_size)
                outs = []
                for bits in candidates:
                    for q in qs:
                        q.set_bits(bits)
                        q.mode = "quant"
                    outs.append(single(name)[0])
                for q in qs:
                    q.mode = "off"
            e_quant[name], e_percep[name] = {}, {}
            for bits, out in zip(candidates, outs):
                mse = float((out - reference).pow(2).mean())
                if not math.isfinite(mse):
                    raise NumericsError(f"sensitivity of {name} at {bits} bits is not finite")
                e_quant[name][bits] = mse
                e_percep[name][bits] = max(0.0, float(perceptual(out, reference)))
        log_timing(
            "sensitivity_measurement", len(sites) * len(candidates), time.perf_counter() - t0
        )
    finally:
        for q, mode, spec, scale, zero in saved:  # exact restore: no range round-trip
            q.mode, q.spec, q.scale, q.zero_point = mode, spec, scale, zero
    return e_quant, e_percep
