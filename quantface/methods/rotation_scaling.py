"""QuantFace part 1: rotation-scaling channel balancing.

The paper's figure: activations X with a few huge outlier channels are first scaled per channel
(a diagonal matrix, outliers migrated into the weights as in SmoothQuant) and then rotated by a
randomized Hadamard transform (RHT), so that both the balanced activations and the balanced
weights are quantization-friendly; in full precision the layer is unchanged:

    Y = X W^T = (X diag(s)^-1 H) (W diag(s) H)^T,      H = diag(±1) H_n / sqrt(n)

Reconstruction from the paper's description (no code was released):
- s_j = max|X_j|^alpha / max|W_j|^(1-alpha) from the cached calibration statistics (alpha 0.5);
  1/s is folded into the producer where the graph allows it (quant/smoothing.py: norms before
  attention/feed-forward, to_v rows, GEGLU rows) and applied at run time elsewhere (counted);
- the RHT runs online on every quantized layer's input channels (per pixel for a conv) and is
  fused offline into the weight, as in our QuaRot adaptation (a UNet has no rotation-invariant
  residual stream to carry one global rotation); signs are seeded per layer;
- `mode` selects the ablations: "both" (the method), "scale" (scaling only), "rht" (rotation
  only), "none".
"""

from __future__ import annotations

import copy

import torch

from quantface.models.base import RestorerBundle
from quantface.quant.calibration import CalibrationSet, observe_quantizer_inputs
from quantface.quant.hadamard import layer_seed, random_signs, randomized_hadamard
from quantface.quant.layers import QuantLayerMixin
from quantface.quant.quantizer import QuantSpec
from quantface.quant.smoothing import SmoothGroup, apply_smoothing, calib_absmax, smoothing_groups
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import wrap_model

MODES = ("both", "scale", "rht", "none")


def plan_balancing(
    model: RestorerBundle, layers: list[str], mode: str
) -> tuple[list[SmoothGroup], set[str], set[str]]:
    """Which smoothing groups apply, which layers scale at run time, which get an online RHT."""
    if mode not in MODES:
        raise ValueError(f"balancing mode must be one of {', '.join(MODES)}, got {mode!r}")
    groups = smoothing_groups(model, layers) if mode in ("both", "scale") else []
    online_scale = {n for g in groups if g.fold == "online" for n in g.layers}
    rotated = set(layers) if mode in ("both", "rht") else set()
    rotated = {n for n in rotated if model.get_submodule(n).weight.shape[1] > 1}
    return groups, online_scale, rotated


@torch.no_grad()
def apply_balancing(
    model: RestorerBundle,
    calib: CalibrationSet,
    groups: list[SmoothGroup],
    alpha: float,
    seed: int,
) -> None:
    """Scale first (fold or run-time), then rotate every layer that carries an online RHT.

    `model` is already wrapped with the layout `plan_balancing` described, so the run-time
    scale buffers and Hadamard sign buffers exist and are filled here.
    """
    absmax = {n: calib_absmax(calib.input_stats(n)) for g in groups for n in g.layers}
    apply_smoothing(model, groups, absmax, alpha)
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLayerMixin) and mod.transform_spec().hadamard:
            signs = random_signs(mod.weight.shape[1], layer_seed(seed, name))
            mod.input_hadamard.signs.copy_(signs)
            mod.weight.copy_(randomized_hadamard(mod.weight, signs, dim=1))


@torch.no_grad()
def balanced_calibration(
    fp: RestorerBundle,
    calib: CalibrationSet,
    mode: str = "both",
    alpha: float = 0.5,
    seed: int = 0,
    batch_size: int = 8,
) -> CalibrationSet:
    """Statistics of the inputs each Linear/Conv2d activation quantizer sees once `fp` is
    balanced (scaled with `alpha` from `calib`, then rotated), over `calib`'s own images.

    These are the activations QuantFace quantizes, measured rather than derived: a rotation
    spreads an outlier channel over all channels, which per-channel maxima before the rotation
    cannot show. The FP function is unchanged (quantizers only observe), and `fp` is left as is.
    """
    model = copy.deepcopy(fp)
    sites = model.quant_targets()
    layers = [
        n
        for n, kind in sites.items()
        if kind != "matmul" and getattr(model.get_submodule(n), "groups", 1) == 1
    ]
    groups, online_scale, rotated = plan_balancing(model, layers, mode)
    spec = QuantSpec(8)
    wrap_model(
        model,
        {
            n: LayerQuant(sites[n], spec, spec, InputTransform(n in online_scale, n in rotated))
            for n in layers
        },
    )
    apply_balancing(model, calib, groups, alpha, seed)
    sample_rows = int(calib.meta.get("sample_rows", 512))
    stats = observe_quantizer_inputs(
        model, calib.images, {n: sites[n] for n in layers}, batch_size, sample_rows, seed
    )
    meta = {**calib.meta, "balancing": {"mode": mode, "alpha": alpha, "seed": seed}}
    return CalibrationSet(calib.images, stats, meta)
