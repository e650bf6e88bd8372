"""SmoothQuant (Xiao et al., ICML 2023): migrate activation outliers into the weights.

What the paper/code does: per input channel j,
`s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` from calibration activations (all linears reading X
share one s), `X <- X diag(s)^-1`, `W <- W diag(s)`, the division folded into the preceding
LayerNorm; no training. alpha = 0.5 by default (the paper tunes it per model: an option here).
Quantizers: weights per-output-channel symmetric absmax, activations symmetric absmax; level O3
= per-tensor *static* activations (the suite's default) with `act_granularity: token` giving
O1 (per-token dynamic). Attention QK^T/AV operands are quantized at the activation bits
(`quantize_output=True` on q/k/v in the repo simulates the BMM inputs the same way).

Adaptation to a UNet/VAE (diffusers modules):
- The LLM code smooths only LayerNorm-fed layers (QKV, FC1). Here every quantized Linear/Conv2d
  (groups = 1) is smoothed; convs per input channel over (C_out, kh, kw), activations per pixel.
- 1/s is folded where the graph is per-channel linear before the layer (quant/smoothing.py:
  norm1/2/3 -> attention q/k/v and ff, Transformer2D GroupNorm -> proj_in, VAE attention
  group_norm -> q/k/v, to_v rows -> to_out.0, GEGLU value rows -> ff.net.2). Elsewhere (convs
  after SiLU, attn2.to_k/to_v fed by the visual prompt, shortcuts, samplers, time embeddings,
  proj_out) it is applied at run time (`InputTransform(scale=True)`), whose C_in multiplies per
  position and C_in FP32 scales are counted in cost.json. `online: false` gives the paper's
  fold-only variant (layers without a foldable producer stay unsmoothed).
- Activation ranges are re-observed on the smoothed FP model (the cached statistics describe the
  unsmoothed one), with the same min-max rule as MaxMin.

Quantizers: `native_scheme` (from `symmetric` and `act_granularity`); a given scheme (the matched
protocol) replaces them, smoothing unchanged, ranges re-observed on the smoothed model by the
scheme's rule. With per-token activations K^T is quantized per key token, as in every method.

Options (config `method_options.smoothquant`): `SmoothQuantOptions` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quantface.methods.base import smoothable
from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet
from quantface.quant.plan import BitPlan
from quantface.quant.scheme import QuantScheme
from quantface.quant.smoothing import apply_smoothing, calib_absmax, smoothing_groups
from quantface.quant.specs import InputTransform
from quantface.registry import METHODS


@dataclass(frozen=True)
class SmoothQuantOptions(Options):
    """SmoothQuant's options (config `method_options.smoothquant`; config/README.md).

    alpha: migration strength; online: also smooth unfoldable layers at run time (false:
    fold-only); act_granularity: `tensor` static (level O3) or `token` dynamic (O1);
    symmetric: symmetric activation grid.
    """

    alpha: float = 0.5
    online: bool = True
    act_granularity: Literal["tensor", "token"] = "tensor"
    symmetric: bool = True


@METHODS.register("smoothquant")
class SmoothQuant:
    """SmoothQuant: per-channel smoothing s = max|X|^a / max|W|^(1-a), folded where possible."""

    label = "SmoothQuant"  # how tables and figures name it

    name = "smoothquant"
    options = SmoothQuantOptions  # its method_options

    def native_scheme(self, opts: SmoothQuantOptions) -> QuantScheme:
        """Weights per-channel symmetric absmax; activations `symmetric`, `act_granularity`."""
        return QuantScheme(
            weight_symmetric=True,
            act_symmetric=opts.symmetric,
            act_granularity=opts.act_granularity,
        )

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: SmoothQuantOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Smoothing groups (folded into the producer, or online where nothing can take s),
        then static ranges observed on the smoothed model."""
        groups = smoothing_groups(model, smoothable(model, plan))
        if not opts.online:
            groups = [g for g in groups if g.fold != "online"]
        online = {n for g in groups if g.fold == "online" for n in g.layers}

        def smooth(model: RestorerBundle) -> None:
            absmax = {n: calib_absmax(calib.input_stats(n)) for g in groups for n in g.layers}
            apply_smoothing(model, groups, absmax, opts.alpha)

        return Recipe(plan, dict.fromkeys(online, InputTransform(scale=True)), transform=smooth)
