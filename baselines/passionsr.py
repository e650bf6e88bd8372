"""PassionSR (Zhu et al., CVPR 2025): learnable boundary quantizer + learnable equivalent transform.

What the official code does (`libozhu03/PassionSR`, `quantization/saw/`), for the one-step SR
diffusion model OSEDiff (SD-2 UNet + VAE, UNet at t = 999):
- LBQ: every quantizer learns its lower/upper clipping bounds (weights per output channel,
  activations per tensor, asymmetric), init from min/max (`Basic2DquantLayer`);
- LET on every Linear/Conv (`saw_layer.py`): per input channel scale s and shift d,
  `x' = (x − d)/s`, `W' = W·s`, `y = Q(x') Q(W') + b + conv(d.expand_as(x), W)`, s init
  `(max|X|/max|W|)^0.3`, d = 0; kept online at inference. The correction is a conv of the
  constant shift image with the layer's own padding, so it is exact at the borders of a padded
  conv (its Linear variant computes `(x + d)/s` and adds `W d` again, i.e. `W x + 2 W d`);
- attention LET in the UNet's transformer blocks (`quant_block.py: cross_attn_forward`, both the
  self- and the cross-attention): `q·s_qk`, `k/s_qk` with one s per head dim (shared by heads),
  and `P·s_vw`, `V/s_vw` with one s per key token, init `(max|K|/max|Q|)^α` and
  `(max|V|/max|P|)^α` from the initialisation pass, learned with the layer scales (LET stage);
  Q, K, P, V are then quantized per tensor at the activation bits;
- DQC (`saw_cali_sep.py: saw_cali_UV_sep`): component by component, each first LET then LBQ,
  MSE, Adam lr 1e-5, 2 epochs over the calibration pairs, batch 1: the encoder against the FP
  encoder's latents of the LQ images; the UNet, fed the quantized encoder's latents, against the
  FP UNet output ε (LET stage) and the FP x0 latent (LBQ stage); the decoder, fed the quantized
  encoder+UNet latents, against the *ground-truth HR images*. Quantizer bounds are re-initialised
  to min/max at every LET iteration only in the UNet-only path (`saw_cali_U_sep`);
- biases are quantized too: one per-tensor asymmetric quantizer at the weight bits each
  (`QuantLayer.bias_quantizer`), with learned bounds;
- 8-bit layers: UNet `time_embed.0`, `out.2`; VAE `quant_conv`, `post_quant_conv`,
  `encoder.conv_out`, `decoder.conv_out`.

Adaptation here:
- DQC's per-component targets become one target, the FP restorer's output image on the
  calibration LQ faces (the shared `distill` loop), for both stages. The benchmark's calibration
  set has no HR ground truth (the official decoder target), and every method here is scored
  against the FP model (PSNR-FP), so each is calibrated towards the FP output; the end-to-end
  target also trains each component for the error it leaves after the others, which the
  sequential schedule gets by feeding quantized inputs forward;
- the LET stage re-initialises every bound to the current min/max at each step (the UNet-only
  path of the official code; its UNet+VAE path keeps the initialisation pass's bounds);
- biases stay FP32, as for every method in the benchmark (cost.json counts them at 32 bits):
  the official W-bit per-tensor bias quantizer only adds error, and the comparison holds the bias
  precision equal across methods;
- the 8-bit list maps to layer roles the model adapter answers (`RestorerBundle.layer_roles`;
  on the diffusers models here `unet.time_embedding.linear_1`, `unet.conv_out`, `vae.quant_conv`,
  `vae.post_quant_conv`, `vae.encoder.conv_out`, `vae.decoder.conv_out`); those layers run at W8A8 (when the setting is lower), noted in plan.json and paid for in cost.json;
- LET on every ungrouped Linear/Conv2d, the shift on all of them: written `x − d` (exact, unlike
  the code's Linear `x + d`); on a zero-padded conv the correction is the official border-exact
  `conv(d broadcast, W_fp)`, computed per call from the per-tap sums `W_fp d` (quant/transforms.py); the
  transformation is online (InputTransform scale/shift, counted in cost.json);
- the attention LET as in the official code (`inner_scale` of each attention matmul, quant/transforms.py),
  on every quantized attention matmul: the UNet's, and the VAE's mid-block attention, whose
  matmuls the official code leaves in FP but the benchmark quantizes for every method. The init
  maxima are over the whole calibration set (one extra FP pass), not a first-batch init with a
  running average. The per-key-token scale fixes the token count: a model calibrated at one
  image size refuses another (the benchmark runs every image at the model's size);
- the code's `split` of every layer's input into two halves is not implemented;
- bounds are kept on either side of zero (quant/bounds.py); Adam with cosine decay and a larger
  learning rate than the paper's 1e-5, because the embedded default runs ~100x fewer steps
  (`config/paper.yaml` has the paper's values).

Quantizers: `native_scheme` (the 8-bit layers with `keep_8bit`); a given scheme replaces them
and drops the 8-bit layers; LET's min-max re-ranging and LBQ's learned bounds run on its grids
(with dynamic activations LBQ learns the weight bounds only).

Options (config `method_options.passionsr`): `PassionSROptions` below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import Tensor

from quantface.methods.base import smoothable
from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.apply import (
    calibrate_weights,
    observe_activation_ranges,
)
from quantface.quant.bounds import keep_bounds_valid_, learnable_bounds
from quantface.quant.calibration import CalibrationSet
from quantface.quant.distill import DistillConfig, distill, fp_targets
from quantface.quant.layers import QuantMatMul
from quantface.quant.let import (
    dynamic_ranges,
    learnable_let,
    learnable_matmul_scales,
    let_init_scale,
    matmul_absmax,
    matmul_init_scale,
)
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.quant.smoothing import calib_absmax
from quantface.quant.specs import InputTransform
from quantface.registry import METHODS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassionSROptions(Options):
    """PassionSR's options (config `method_options.passionsr`; config/README.md).

    alpha: LET scale init (max|X|/max|W|)^alpha; let_steps, lbq_steps, let_lr, lbq_lr: the two
    distillation stages (transformation, bounds); batch_size: images per step; shift: learn
    the LET shift; attn_let: attention LET; keep_8bit: PassionSR's W8A8 layers.
    """

    training_budget = ("let_steps", "lbq_steps")  # the options that are its training budget

    alpha: float = 0.3
    let_steps: int = 40
    lbq_steps: int = 40
    let_lr: float = 1e-3
    lbq_lr: float = 1e-3
    batch_size: int = 4
    shift: bool = True
    attn_let: bool = True
    keep_8bit: bool = True


# the official special layers (time_embed.0, out.2, quant_conv, post_quant_conv, the encoder's
# and decoder's conv_out) by role: the model adapter names them (RestorerBundle.layer_roles)
EIGHT_BIT_ROLES = (
    "time_embedding_in",
    "unet_out",
    "vae_latent_out",
    "vae_latent_in",
    "vae_encoder_out",
    "vae_decoder_out",
)
EIGHT_BIT_NOTE = "kept at W8A8 as in PassionSR (quant_model.py special layers)"


def attention_let(
    model: RestorerBundle, images: Tensor, batch_size: int, alpha: float
) -> dict[str, QuantMatMul]:
    """Give every attention matmul its contraction-dim scale at PassionSR's init."""
    stats = matmul_absmax(model, images, batch_size)
    mms = {n: m for n, m in model.named_modules() if isinstance(m, QuantMatMul)}
    for n, m in mms.items():
        a_max, b_max = stats[n]
        m.add_inner_scale(a_max.numel())
        m.inner_scale.copy_(matmul_init_scale(a_max, b_max, alpha))
    return mms


@METHODS.register("passionsr")
class PassionSR:
    """PassionSR: LET (scale + shift, init (max|X|/max|W|)^0.3) then LBQ, distilled from FP."""

    label = "PassionSR"  # how tables and figures name it

    name = "passionsr"
    options = PassionSROptions  # its method_options

    def native_scheme(self, opts: PassionSROptions) -> QuantScheme:
        """Per-channel asym weights, per-tensor static asym activations, both from min-max (LET
        and LBQ then learn them); the 8-bit layers with `keep_8bit`."""
        return QuantScheme(exceptions=opts.keep_8bit)

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: PassionSROptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """LET scales (and shifts) on every ungrouped layer and the attention matmuls at
        PassionSR's init, ranges from the cached min-max; then the two distillation stages."""
        if scheme.exceptions:
            plan = plan.at_least(model.layers_in_roles(EIGHT_BIT_ROLES), 8, EIGHT_BIT_NOTE)
        let_names = smoothable(model, plan)
        transform = InputTransform(scale=True, shift=opts.shift)
        bs = opts.batch_size
        mms: dict[str, QuantMatMul] = {}

        def init_let(model: RestorerBundle) -> None:
            for n in let_names:
                m = model.get_submodule(n)
                m.input_scale.copy_(
                    let_init_scale(calib_absmax(calib.input_stats(n)), m.weight, opts.alpha)
                )
            if opts.attn_let:
                mms.update(attention_let(model, calib.images, bs, opts.alpha))

        def let_then_lbq(model: RestorerBundle) -> None:
            layers = {n: model.get_submodule(n) for n in let_names}
            model.requires_grad_(False)
            targets = fp_targets(fp, calib.images, bs)
            # stage 1: the transformation, every bound re-initialised to the current min/max
            with (
                dynamic_ranges(model),
                learnable_let(layers) as params,
                learnable_matmul_scales(mms) as attn_params,
            ):
                dc = DistillConfig(opts.let_steps, opts.let_lr, bs)
                groups = [{"params": params + attn_params}]
                curve = distill(model, calib.images, targets, groups, dc, stage="let_step")
                log.info("passionsr LET: loss %s", _ends(curve))
            calibrate_weights(model, scheme.weight_init)
            observe_activation_ranges(model, calib.images, bs, scheme.act_init)
            # stage 2: the bounds, transformation fixed
            with learnable_bounds(model, "all") as params:
                dc = DistillConfig(opts.lbq_steps, opts.lbq_lr, bs, seed=1)
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

        # the initial ranges are placeholders: stage 1 re-ranges every call
        return Recipe(
            plan,
            dict.fromkeys(let_names, transform),
            transform=init_let,
            act_ranges="cached",
            refine=let_then_lbq,
        )


def _ends(curve: list[float]) -> str:
    return f"{curve[0]:.3e} -> {curve[-1]:.3e}" if curve else "(no steps)"
