"""EfficientDM (He et al., ICLR 2024): quantization-aware LoRA distilled from the FP model.

What the paper/code does (`ThisisBillhe/EfficientDM`):
- naive PTQ init: weights per output channel (min-max), activations per tensor (Lp search); the
  naive model's weights are stored as integer codes W_int (`save_naive_2_intmodel.py`);
- QALoRA: rank-32 LoRA *inside* the weight quantizer on the dequantized integer weight,
  `W_q = Q_w((W_int − z) Δ + B A)` with the weight quantizer's own Δ, z (`QuantModule_intnlora`;
  A Kaiming-uniform, B = 0; conv: A a kh×kw conv C_in → r, B a 1×1 conv r → C_out);
- TALSQ: learnable activation step sizes and zero points (`delta_list`, `zp_list`, one per
  timestep) and learnable weight step sizes (weight zero points stay fixed);
- AdamW, LoRA lr = mean(Δ_w)/2500 ("scale-aware"), weight Δ lr 1e-6, activation Δ lr 5e-4,
  distillation MSE between the quantized and FP noise predictions, 160 × 100 DDIM steps;
- first three and last quantized modules at 8 bit (time_embed.0, time_embed.2, input conv,
  output conv).

Adaptation here:
- one step: TALSQ has a single step size and zero point per quantizer (= LSQ with a learned
  offset) and the distillation target is the FP restorer's output image on the calibration LQ
  faces (shared `distill` loop, Adam + cosine; the code: AdamW, linear decay); no gradient
  clipping, as in the code (the shared loop's default clips the global norm to 1, which with the
  zero points' gradients in the norm shrank every other update);
- W_int are the codes of the min-max weight quantizer, taken when LoRA is installed; Δ is shared
  by deq and Q_w as the code's aliased dequantizer Δ;
- the learned activation zero points are rounded in the forward (straight-through: the code's
  gradient), where the code adds them unrounded, so every quantizer stays an integer b-bit grid
  (`quant/learnable.py`); they train in the activation step-size group (lr a_lr, as the code);
- 8-bit, by layer role (`RestorerBundle.layer_roles`): the time MLP's two Linears and the UNet's
  first and last convs, `unet.time_embedding.linear_1/2`, `unet.conv_in`, `unet.conv_out` on the
  diffusers models here (the code only quantizes the UNet; the VAE follows the plan), noted in
  plan.json and paid for in cost.json; as the code's plain `QuantModule`s they get no LoRA and
  none of their step sizes or zero points is trained;
- activation ranges are searched on the FP network's activations (the code's init forward runs
  with every quantizer on, so each layer's search sees its quantized upstream);
- rank: `rank` (32) capped at `max_rank_fraction` (0.5) of min(C_out, fan_in), so a tiny layer
  is not fully replaced; LoRA on every ungrouped Linear/Conv2d;
- LoRA lr = mean(Δ_w) · `lora_lr_scale` per layer. The code's 1/2500 is a rate for its 16,000
  steps; with fewer steps the default (`lora_lr_scale: null`) keeps the code's total LoRA update,
  lora_lr_scale = (1/2500) · 16,000 / steps (0.16 at 40 steps, 1/2500 at 16,000). On the integer
  weight a code changes only once |B A| passes half a step, so at the code's per-step rate a
  short run leaves every code as it was and the LoRA trains nothing. The step-size rates (w_lr,
  a_lr) stay the code's per-step values: they fine-tune ranges that start at their searched
  values, and scaled by 16,000 / steps they throw them off by whole steps;
- at the end LoRA is merged into the weights, W <- deq(W_int) + B A, then quantized by the
  learned weight quantizer (the code keeps W_int and the LoRA factors separately).

Quantizers: `native_scheme` (the 8-bit layers with `keep_8bit`); a given scheme replaces them,
its 8-bit layers dropped (every layer then gets LoRA and trained step sizes).

Options (config `method_options.efficientdm`): `EfficientDMOptions` below, among them switches
for measuring the official form's parts (config/baseline_fixes.yaml), each defaulting to the
code's: lora_on, learn_act_zero_points, clip_grad_norm.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

from quantface.methods.base import smoothable
from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.distill import DistillConfig, distill, fp_targets
from quantface.quant.learnable import clamp_scales_, learnable_scales, learnable_zero_points
from quantface.quant.lora import weight_lora
from quantface.quant.lowrank import capped_rank
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.registry import METHODS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EfficientDMOptions(Options):
    """EfficientDM's options (config `method_options.efficientdm`; config/README.md).

    rank: QALoRA rank, capped per layer by max_rank_fraction of min(C_out, fan-in); steps,
    batch_size: the distillation; lora_lr_scale: LoRA lr = mean weight step x this (None: the
    code's total LoRA update at this step count); w_lr, a_lr: of the weight / activation step
    sizes; keep_8bit: EfficientDM's W8A8 layers; lora_on: "codes" Q(deq(W_int) + B A) (the
    code's) or "weight" Q(W + B A); learn_act_zero_points: learned activation zero points;
    clip_grad_norm: None no clipping (the code's), a number clips the global norm; seed: LoRA
    A init.
    """

    training_budget = ("steps",)  # the options that are its training budget

    rank: int = 32
    max_rank_fraction: float = 0.5
    steps: int = 80
    batch_size: int = 4
    lora_lr_scale: float | None = None  # None: the code's total LoRA update at this step count
    w_lr: float = 1e-6
    a_lr: float = 5e-4
    keep_8bit: bool = True
    lora_on: Literal["codes", "weight"] = "codes"
    learn_act_zero_points: bool = True
    clip_grad_norm: float | None = None
    seed: int = 0


CODE_LORA_LR_SCALE, CODE_STEPS = 1 / 2500, 160 * 100  # train_efficientdm.py: lr, epochs x steps
# set_first_last_layer_to_8bit: the time MLP, the first and the last conv, by role (the model
# adapter names them: RestorerBundle.layer_roles)
EIGHT_BIT_ROLES = ("time_embedding_in", "time_embedding_out", "unet_in", "unet_out")
EIGHT_BIT_NOTE = "kept at W8A8 as in EfficientDM (set_first_last_layer_to_8bit)"


@METHODS.register("efficientdm")
class EfficientDM:
    """EfficientDM: QALoRA + learned step sizes, distilled from the FP model, LoRA merged."""

    label = "EfficientDM"  # how tables and figures name it

    name = "efficientdm"
    options = EfficientDMOptions  # its method_options

    def native_scheme(self, opts: EfficientDMOptions) -> QuantScheme:
        """Per-channel asym min-max weights; per-tensor static asym activations from the Lp
        search on real activations; the 8-bit layers with `keep_8bit`."""
        return QuantScheme(act_init="mse", exceptions=opts.keep_8bit)

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: EfficientDMOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Ranges observed on the FP forward (the Lp search natively), then one distillation of
        the weight LoRAs, every step size (and optionally the activation zero points)."""
        # the 8-bit layers are plain QuantModules in the code: no LoRA, nothing of them trained
        eight_bit = model.layers_in_roles(EIGHT_BIT_ROLES)
        frozen = [n for n in eight_bit if n in plan] if scheme.exceptions else []
        plan = plan.at_least(frozen, 8, EIGHT_BIT_NOTE)
        bs = opts.batch_size

        def distill_loras(model: RestorerBundle) -> None:
            model.requires_grad_(False)
            layers = {n: model.get_submodule(n) for n in smoothable(model, plan) if n not in frozen}
            frac = opts.max_rank_fraction
            ranks = {
                n: capped_rank(opts.rank, m.weight.shape[0], m.weight[0].numel(), frac)
                for n, m in layers.items()
            }
            targets = fp_targets(fp, calib.images, bs)
            with (
                learnable_scales(model, "weight") as w_scales,
                learnable_scales(model, "act") as a_scales,
                (
                    learnable_zero_points(model, "act")
                    if opts.learn_act_zero_points
                    else contextlib.nullcontext([])
                ) as a_zeros,
                weight_lora(layers, ranks, opts.seed, opts.lora_on == "codes") as loras,
            ):
                fixed = {id(p) for n in frozen for p in model.get_submodule(n).parameters()}
                w_scales, a_scales, a_zeros = (
                    [p for p in ps if id(p) not in fixed] for ps in (w_scales, a_scales, a_zeros)
                )
                lora_scale = opts.lora_lr_scale
                if lora_scale is None:
                    lora_scale = CODE_LORA_LR_SCALE * CODE_STEPS / max(opts.steps, 1)
                groups = [
                    {
                        "params": list(lora.parameters()),
                        "lr": layers[n].weight_quantizer.scale.detach().mean().item() * lora_scale,
                    }
                    for n, lora in loras.items()
                ]
                groups += [{"params": w_scales, "lr": opts.w_lr}]
                groups += [{"params": a_scales + a_zeros, "lr": opts.a_lr}]
                scales = w_scales + a_scales
                dc = DistillConfig(
                    opts.steps,
                    opts.a_lr,
                    bs,
                    seed=opts.seed,
                    clip_grad_norm=opts.clip_grad_norm,
                )
                curve = distill(
                    model, calib.images, targets, groups, dc, lambda: clamp_scales_(scales)
                )
                if curve:
                    log.info("efficientdm distillation: loss %.3e -> %.3e", curve[0], curve[-1])

        return Recipe(plan, range_batch=bs, refine=distill_loras)
