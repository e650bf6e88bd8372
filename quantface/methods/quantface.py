"""QuantFace (arXiv 2506.00820): rotation-scaling balancing + QD-LoRA, and its MP variant.

`quantface`: every UNet/VAE Linear and Conv2d is balanced (methods/rotation_scaling.py), split
into a quantized residual plus SVD and LoRA branches (methods/qdlora.py), then the branches and
all step sizes are trained by distillation from the FP model on the calibration LQ faces.
`quantface_mp`: the same, with activation bit-widths chosen per layer by the integer program
(methods/allocation.py) before the distillation, so QD-LoRA trains under the final plan.

Quantizers (the paper does not say; weights follow PassionSR's, the same lab's, conventions):
weights per-output-channel asymmetric, initial range by the Lp-2.4 MSE search; activations
per-token *dynamic* asymmetric by default (`act_granularity: token`: each token's range at run
time, learned step sizes then scale it), or per-tensor static asymmetric with `act_granularity:
tensor` (initial range min-max over the calibration set measured on the balanced model), the
paper family's usual convention and the other baselines' (MaxMin, Q-Diffusion, PassionSR,
EfficientDM). The quantizer alone moves PSNR-FP at A4 by several dB, so tables state it per row
and the matched protocol hands every method one scheme (`native_scheme` is QuantFace's own);
attention QK^T and AV at the activation bits (as every method here), with Q/K/V rotated per head by a
Hadamard (`rotate_attention`, the RHT applied to the attention operands). The visual prompt
embedder stays FP. Options: `QuantFaceOptions` and `QuantFaceMPOptions`
(methods/quantface_options.py; config/README.md). Ablations are options: balancing
both|scale|rht|none, branches both|svd|lora|none ("none" = no QD-LoRA: no branches and no
distillation), lam (1.0 = allocation by quantization error only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from quantface.device import module_device
from quantface.errors import ConfigError
from quantface.methods.allocation import (
    AllocationProblem,
    activation_elements,
    activation_sites,
    combine_costs,
    fill_unmeasured,
    layer_sensitivity,
    solve_allocation,
)
from quantface.methods.base import smoothable
from quantface.methods.pipeline import Recipe
from quantface.methods.qdlora import (
    branch_parameters,
    branch_ranks,
    init_qdlora,
    round_branches_to_fp16,
)
from quantface.methods.quantface_options import (
    QuantFaceMPOptions,
    QuantFaceOptions,
    check_perceptual,
)
from quantface.methods.rotation_scaling import apply_balancing, plan_balancing
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.distill import DistillConfig, distill, fp_targets, random_crops
from quantface.quant.learnable import clamp_scales_, learnable_scales
from quantface.quant.plan import BitPlan
from quantface.quant.rotation import rotate_attention_heads
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform
from quantface.registry import METHODS
from quantface.subsample import spaced_subset

log = logging.getLogger(__name__)


def native_scheme(opts: QuantFaceOptions) -> QuantScheme:
    """Per-channel asym weights from `weight_observer`; activations asym, `act_granularity`
    (token: dynamic; tensor: static min-max on the balanced model)."""
    return QuantScheme(weight_init=opts.weight_observer, act_granularity=opts.act_granularity)


def balanced_recipe(
    model: RestorerBundle,
    calib: CalibrationSet,
    plan: BitPlan,
    opts: QuantFaceOptions,
    refine: Callable[[RestorerBundle], dict[str, str]] | None = None,
) -> Recipe:
    """QuantFace's model before training: attention heads rotated (on `model`, before
    wrapping), every ungrouped layer balanced and split into a quantized residual plus SVD and
    LoRA branches; FP-exact with quantizers off. `refine`: what trains it."""
    sites = model.quant_targets()
    layers = smoothable(model, plan)
    if opts.rotate_attention and opts.balancing in ("both", "rht"):
        for attn in sorted({n.rpartition(".")[0] for n in plan if sites[n] == "matmul"}):
            rotate_attention_heads(model.get_submodule(attn))
    groups, online_scale, rotated = plan_balancing(model, layers, opts.balancing)
    ranks = {
        n: branch_ranks(
            model.get_submodule(n).weight.shape,
            opts.rank,
            opts.max_rank_fraction,
            opts.branches,
        )
        for n in layers
    }
    transforms = {
        n: InputTransform(n in online_scale, n in rotated, sum(r)) for n, r in ranks.items()
    }

    def balance(model: RestorerBundle) -> None:
        apply_balancing(model, calib, groups, opts.alpha, opts.seed)
        gen = torch.Generator().manual_seed(opts.seed)
        for name, (svd_rank, lora_rank) in ranks.items():
            init_qdlora(model.get_submodule(name), svd_rank, lora_rank, gen)

    return Recipe(plan, transforms, transform=balance, refine=refine)


def train_qdlora(
    model: RestorerBundle, fp: RestorerBundle, calib: CalibrationSet, opts: QuantFaceOptions
) -> list[float]:
    """Jointly train the branches and every static step size against the FP model's outputs."""
    if opts.branches == "none" or opts.steps <= 0:
        return []
    cfg = DistillConfig(opts.steps, opts.lr, opts.batch_size, opts.loss, opts.seed)
    images = random_crops(calib.images, opts.crop, opts.crops_per_image, opts.seed)
    targets = fp_targets(fp, images, cfg.batch_size)
    model.requires_grad_(False)
    branches = branch_parameters(model)
    for p in branches:
        p.requires_grad_(True)
    with learnable_scales(model) as scales:
        groups = [{"params": branches}, {"params": scales, "lr": opts.scale_lr}]
        curve = distill(model, images, targets, groups, cfg, lambda: clamp_scales_(scales))
    model.requires_grad_(False)
    round_branches_to_fp16(model)
    if curve:
        log.info("QD-LoRA distillation loss %.3e -> %.3e", curve[0], curve[-1])
    return curve


@METHODS.register("quantface")
class QuantFace:
    """QuantFace: rotation-scaling balancing + QD-LoRA distillation, uniform bits."""

    label = "QuantFace"  # how tables and figures name it

    name = "quantface"
    mixed_precision = False
    options = QuantFaceOptions  # its method_options

    def native_scheme(self, opts: QuantFaceOptions) -> QuantScheme:
        return native_scheme(opts)

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: QuantFaceOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Balanced and split (`balanced_recipe`), then QD-LoRA distilled from `fp`."""
        return balanced_recipe(
            model, calib, plan, opts, lambda m: _curve_notes(train_qdlora(m, fp, calib, opts))
        )


@METHODS.register("quantface_mp")
class QuantFaceMP:
    """QuantFace-MP: QuantFace with per-layer activation bits from an integer program."""

    label = "QuantFace-MP"  # how tables and figures name it

    name = "quantface_mp"
    mixed_precision = True
    options = QuantFaceMPOptions  # its method_options

    def native_scheme(self, opts: QuantFaceOptions) -> QuantScheme:
        return native_scheme(opts)

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: QuantFaceMPOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Balanced and split, activation bits allocated by the ILP from measured sensitivities,
        then QD-LoRA distilled under the final plan."""
        budget = float(opts.budget or _plan_act_bits(plan))
        candidates = sorted(opts.candidates)

        def allocate_then_train(model: RestorerBundle) -> dict[str, str]:
            images = random_crops(
                calib.images[: opts.sensitivity_images],
                opts.sensitivity_crop,
                1,
                opts.seed + 1,
            )
            perceptual = perceptual_distance(
                opts.perceptual, Path(opts.weights_dir), module_device(model)
            )
            every = list(activation_sites(model))
            only = spaced_subset(every, opts.sensitivity_sites)
            e_q, e_p = layer_sensitivity(
                model, images, candidates, perceptual, opts.batch_size, only
            )
            e_q, e_p = fill_unmeasured(e_q, every), fill_unmeasured(e_p, every)
            weight = activation_elements(model, list(e_q))
            problem = AllocationProblem(combine_costs(e_q, e_p, opts.lam), weight, budget)
            alloc = solve_allocation(problem)
            sites = activation_sites(model)
            for name, bits in alloc.bits.items():
                for q in sites[name]:
                    q.set_bits(bits)
            curve = train_qdlora(model, fp, calib, opts)
            return {
                **_curve_notes(curve),
                "allocation": json.dumps(
                    {
                        "budget": budget,
                        "average_act_bits": round(alloc.average_bits, 4),
                        "candidates": candidates,
                        "lam": opts.lam,
                        "perceptual": opts.perceptual,
                        "sensitivity_sites": f"{len(only or every)} of {len(every)}",
                        "weighting": "activation elements per image",
                        "ilp_variables": alloc.n_variables,
                        "ilp_constraints": alloc.n_constraints,
                        "ilp_status": alloc.status,
                        "ilp_seconds": round(alloc.solve_s, 4),
                        "objective": alloc.objective,
                    }
                ),
            }

        return balanced_recipe(model, calib, plan, opts, allocate_then_train)


def _plan_act_bits(plan: BitPlan) -> int:
    bits = {b.a_bits for b in plan.values()}
    if len(bits) != 1:
        raise ConfigError("quantface_mp needs a uniform starting plan (the budget is its width)")
    return bits.pop()


def _curve_notes(curve: list[float]) -> dict[str, str]:
    if not curve:
        return {"qdlora": "no distillation"}
    return {"qdlora": f"{len(curve)} steps, loss {curve[0]:.4e} -> {curve[-1]:.4e}"}


def perceptual_distance(metric_name: str, weights_dir: Path, device: str | torch.device = "cpu"):
    """A full-reference metric (on the model's device) turned into a distance from the FP
    output (0 = identical)."""
    metric = check_perceptual(metric_name, weights_dir)
    metric.verify_weights(weights_dir)
    metric.build(weights_dir, device)
    sign = 1.0 if metric.higher_is_better else -1.0

    cache: dict[str, torch.Tensor] = {}

    def distance(out: torch.Tensor, ref: torch.Tensor) -> float:
        if cache.get("ref") is not ref:  # one reference per sensitivity run: score it once
            cache.update(ref=ref, perfect=metric.score(ref, ref))
        perfect = cache["perfect"]
        if not torch.isfinite(perfect).all():
            raise ConfigError(f"perceptual metric '{metric_name}' has no finite perfect score")
        return float((sign * (perfect - metric.score(out.clamp(0, 1), ref))).mean())

    return distance
