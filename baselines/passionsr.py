"""PassionSR (Zhu et al., CVPR 2025): learnable boundary quantizer + learnable equivalent transform.

What the paper/code does (methods.md §6, `libozhu03/PassionSR`), for the one-step SR diffusion
model OSEDiff (UNet + VAE):
- LBQ: every quantizer learns its lower/upper clipping bounds (weights per output channel,
  activations per tensor, asymmetric), init from min/max;
- LET: per input channel scale s and shift d between activation and weight,
  `x' = (x − d)/s`, `W' = W·s`, `y = Q(x') Q(W') + b + W d`, s init `(max|X|/max|W|)^0.3`, d = 0;
  kept online at inference (not folded);
- DQC: two stages, (1) LET trainable with every quantizer bound re-initialised to the current
  min/max each iteration, then (2) LBQ bounds trainable with the transformation fixed; MSE to
  the FP model's outputs; Adam lr 1e-5, 2 epochs over 500 pairs, batch 1;
- 8-bit layers: UNet `time_embed.0`, `out.2`; VAE `quant_conv`, `post_quant_conv`,
  `encoder.conv_out`, `decoder.conv_out`.

Adaptation here:
- DQC's per-component targets (latent x0 for the UNet, latents/images for the VAE) become one
  target, the FP restorer's output image on the calibration LQ faces (the shared `distill` loop);
- the 8-bit list maps to diffusers names `unet.time_embedding.linear_1`, `unet.conv_out`,
  `vae.quant_conv`, `vae.post_quant_conv`, `vae.encoder.conv_out`, `vae.decoder.conv_out`; those
  layers run at W8A8 (when the setting is lower), noted in plan.json and paid for in cost.json;
- LET on every ungrouped Linear/Conv2d; the shift only where `W d` is a per-channel constant
  (Linear, unpadded conv; a padded conv's border makes it position dependent), padded convs get
  the scale only; the transformation is online (InputTransform scale/shift, counted in cost.json);
- the attention LET (q/k per-head-dim and P/V per-token scales) and the code's `split` of every
  layer's input into two halves are not implemented;
- bounds are kept on either side of zero (quant/bounds.py); Adam with cosine decay and a larger
  learning rate than the paper's 1e-5, because the embedded default runs ~100x fewer steps
  (`config/paper.yaml` has the paper's values).

Options (config `method_options.passionsr`): alpha (0.3), let_steps (40), lbq_steps (40),
let_lr (1e-3), lbq_lr (1e-3), batch_size (4), shift (true), keep_8bit (true).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from quantface.methods.base import check_options, smoothable
from quantface.models.base import RestorerBundle
from quantface.quant.apply import (
    calibrate_weights,
    observe_activation_ranges,
    set_activation_ranges,
    standard_layout,
)
from quantface.quant.bounds import keep_bounds_valid_, learnable_bounds
from quantface.quant.calibration import CalibrationSet
from quantface.quant.distill import DistillConfig, distill, fp_targets
from quantface.quant.layers import InputTransform, LayerQuant, _padding, wrap_model
from quantface.quant.let import dynamic_ranges, learnable_let, let_init_scale
from quantface.quant.plan import BitPlan, LayerBits
from quantface.quant.smoothing import calib_absmax
from quantface.registry import METHODS

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "alpha": 0.3,
    "let_steps": 40,
    "lbq_steps": 40,
    "let_lr": 1e-3,
    "lbq_lr": 1e-3,
    "batch_size": 4,
    "shift": True,
    "keep_8bit": True,
}
EIGHT_BIT = (
    "unet.time_embedding.linear_1",
    "unet.conv_out",
    "vae.quant_conv",
    "vae.post_quant_conv",
    "vae.encoder.conv_out",
    "vae.decoder.conv_out",
)
EIGHT_BIT_NOTE = "kept at W8A8 as in PassionSR (quant_model.py special layers)"


def keep_8bit(plan: BitPlan) -> BitPlan:
    """PassionSR's sensitive layers at (at least) W8A8."""
    over = {
        n: LayerBits(max(plan[n].w_bits, 8), max(plan[n].a_bits, 8))
        for n in EIGHT_BIT
        if n in plan and (plan[n].w_bits < 8 or plan[n].a_bits < 8)
    }
    return plan.with_overrides(over, EIGHT_BIT_NOTE) if over else plan


def shift_exact(mod) -> bool:
    """W d is constant over positions: a Linear, or a conv without padding."""
    return not hasattr(mod, "padding") or all(p == 0 for p in _padding(mod))


@METHODS.register("passionsr")
class PassionSR:
    """PassionSR: LET (scale + shift, init (max|X|/max|W|)^0.3) then LBQ, distilled from FP."""

    name = "passionsr"

    def quantize(
        self, fp: RestorerBundle, calib: CalibrationSet, plan: BitPlan, cfg: dict[str, Any]
    ) -> RestorerBundle:
        opts = check_options(cfg, DEFAULTS, self.name)
        if opts["keep_8bit"]:
            plan = keep_8bit(plan)
        model = copy.deepcopy(fp).eval()
        sites = model.quant_targets()
        let_names = smoothable(model, plan)
        layout = standard_layout(sites, plan)
        for n in let_names:
            shift = bool(opts["shift"]) and shift_exact(model.get_submodule(n))
            lq = layout[n]
            layout[n] = LayerQuant(lq.kind, lq.a, lq.w, InputTransform(scale=True, shift=shift))
        wrap_model(model, layout)
        layers = {n: model.get_submodule(n) for n in let_names}
        for n, m in layers.items():
            m.input_scale.copy_(
                let_init_scale(calib_absmax(calib.input_stats(n)), m.weight, opts["alpha"])
            )
        calibrate_weights(model, "minmax")  # placeholders: stage 1 re-ranges every call
        set_activation_ranges(model, calib, "minmax")
        model.requires_grad_(False)
        bs = int(opts["batch_size"])
        targets = fp_targets(fp, calib.images, bs)
        # stage 1: the transformation, every bound re-initialised to the current min/max
        with dynamic_ranges(model), learnable_let(layers) as params:
            dc = DistillConfig(int(opts["let_steps"]), float(opts["let_lr"]), bs)
            curve = distill(
                model, calib.images, targets, [{"params": params}], dc, stage="let_step"
            )
            log.info("passionsr LET: loss %s", _ends(curve))
        calibrate_weights(model, "minmax")
        observe_activation_ranges(model, calib.images, bs)
        # stage 2: the bounds, transformation fixed
        with learnable_bounds(model, "all") as params:
            dc = DistillConfig(int(opts["lbq_steps"]), float(opts["lbq_lr"]), bs, seed=1)
            curve = distill(
                model,
                calib.images,
                targets,
                [{"params": params}],
                dc,
                lambda: keep_bounds_valid_(params),
                stage="lbq_step",
            )
            log.info("passionsr LBQ: loss %s", _ends(curve))
        model.plan_notes = dict(plan.notes)
        return model.eval()


def _ends(curve: list[float]) -> str:
    return f"{curve[0]:.3e} -> {curve[-1]:.3e}" if curve else "(no steps)"
