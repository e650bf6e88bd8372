"""QuaRot (Ashkboos et al., NeurIPS 2024): randomized Hadamard rotations remove outliers.

What the paper/code does: rotate the residual stream of an LLM by one random
Hadamard Q fused into every weight (`W <- W Q`, writers `W <- Q^T W`), plus online Hadamards
where no fusion exists (down_proj input, o_proj input, Q and K per head for the KV cache);
weights per-output-channel *symmetric* (RTN or GPTQ; `--w_clip` = MSE clip search: grid 100,
max shrink 0.8, norm 2.4), activations per-token *dynamic symmetric* with a clip ratio
(`--a_clip_ratio`, 1.0 by default). Non-power-of-two sizes use H_K (x) H_{2^m} with a stored H_K.

Adaptation to a UNet/VAE (no residual stream that every reader reaches through a norm: GroupNorm
+ SiLU before convs, concatenated skips, resampling, and proj_out reads the stream with no norm,
so the LLM's global fused Q is not exact here):
- every quantized Linear/Conv2d gets its *own* randomized Hadamard on its input, applied online
  (`InputTransform(hadamard=True)`: per token for a Linear, over channels per pixel for a conv),
  and its weight is pre-rotated offline, `W <- W diag(r) H` over the input channels (the variant
  deepcompressor uses for diffusion, extended to convs; conv2d(x H, W H) = conv2d(x, W) with
  zero padding). Rotating C_in*k*k instead would hit sizes with no Hadamard (2880 = 60*48);
- sizes: quant/hadamard.py (Paley-constructed H_K, K = 12, 20, 60, ...; 320/640/1280 = 20*2^k;
  block-diagonal for the 3 RGB channels); signs seeded per layer from `seed` and the layer name;
- attention: Q and K are rotated per head by an orthonormal H_{d_head} fused into to_q/to_k
  rows ((qH)(kH)^T = qk^T, QuaRot's KV-cache rotation, offline here because there is no RoPE),
  and V per head fused into to_v rows with the inverse in to_out.0's columns (QuaRot's
  rotate_ov_proj). No cross-head Hadamard (5/10/20 heads have none);
- QuaRot keeps queries and the softmax output in 16 bit; here both attention matmuls are
  quantized at the activation bits like every method here, per token (K per token too);
- the online Hadamards' n*log2(n) adds per position and their sign vectors are in cost.json;
- RTN only (no GPTQ), with the MSE weight clip (`w_clip`, on by default as in the README command).

Quantizers: `native_scheme` (from `w_clip` and `a_clip_ratio`); a given scheme replaces them,
rotations unchanged; static activation ranges are then observed on the rotated model.

Options (config `method_options.quarot`): `QuaRotOptions` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.hadamard import layer_seed, random_signs, randomized_hadamard
from quantface.quant.layers import QuantLayerMixin
from quantface.quant.plan import BitPlan
from quantface.quant.rotation import rotate_attention_heads
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform
from quantface.registry import METHODS


@dataclass(frozen=True)
class QuaRotOptions(Options):
    """QuaRot's options (config `method_options.quarot`; config/README.md).

    a_clip_ratio: per-token dynamic activation range shrink; w_clip: MSE clip search of the
    weights (false: min-max); seed: of the Hadamard signs (per layer with its name);
    rotate_attention: per-head Hadamards fused into to_q/to_k and to_v/to_out.0.
    """

    a_clip_ratio: float = 1.0
    w_clip: bool = True
    seed: int = 0
    rotate_attention: bool = True


@METHODS.register("quarot")
class QuaRot:
    """QuaRot: online randomized Hadamard per layer, fused weights, per-token dynamic activations."""

    label = "QuaRot"  # how tables and figures name it

    name = "quarot"
    options = QuaRotOptions  # its method_options

    def native_scheme(self, opts: QuaRotOptions) -> QuantScheme:
        """Weights per-channel symmetric (MSE clip with `w_clip`); activations per-token
        dynamic symmetric with `a_clip_ratio`."""
        return QuantScheme(
            weight_symmetric=True,
            weight_init="mse" if opts.w_clip else "minmax",
            act_symmetric=True,
            act_granularity="token",
            act_clip_ratio=opts.a_clip_ratio,
        )

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: QuaRotOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Q/K/V rotated per head (before wrapping), an online randomized Hadamard on every
        ungrouped layer's input folded into its weight; static ranges (a given scheme) are
        observed on the rotated model."""
        sites = model.quant_targets()
        if opts.rotate_attention:
            attn_names = {n.rpartition(".")[0] for n, k in sites.items() if k == "matmul"}
            for n in sorted(attn_names):
                rotate_attention_heads(model.get_submodule(n))
        transforms = {}
        for name in plan:
            if sites[name] != "matmul":
                mod = model.get_submodule(name)
                n_in, grouped = mod.weight.shape[1], getattr(mod, "groups", 1) != 1
                transforms[name] = InputTransform(hadamard=n_in > 1 and not grouped)

        def rotate(model: RestorerBundle) -> None:
            for name, mod in model.named_modules():
                if isinstance(mod, QuantLayerMixin) and mod.transform_spec().hadamard:
                    signs = random_signs(mod.weight.shape[1], layer_seed(opts.seed, name))
                    with torch.no_grad():
                        mod.input_hadamard.signs.copy_(signs)
                        mod.weight.copy_(randomized_hadamard(mod.weight, signs, dim=1))

        return Recipe(plan, transforms, transform=rotate)
