"""SVDQuant (Li et al., ICLR 2025): smoothing plus a 16-bit low-rank branch absorbing outliers.

What the paper/code does (methods.md §8): smooth `X^ = X diag(l)^-1`, `W^ = W diag(l)`, then split
`W^ = L1 L2 + R` with L1 L2 the rank-r SVD (r = 32) kept in 16 bit and only the residual R
quantized: `Y = X^ L1 L2 + Q(X^) Q(R)`. deepcompressor: INT4 symmetric weights in groups of 64
input channels, INT4 *dynamic* activations in groups of 64 channels per token, smoothing applied
online (`fuse_when_possible: false`), alpha searched per layer on a 20-point grid by output
error, the low-rank branch refined iteratively (refit to W - Q(R), up to 100 iterations).

Adaptation and choices here:
- layers: every quantized Linear and ungrouped Conv2d gets smoothing + branch (deepcompressor
  skips resblocks, proj_in/out and samplers on SDXL; methods.md §8 proposes all layers for the
  OSDFace UNet). A conv [O, I, kh, kw] is split as [O, I*kh*kw]; its branch is a kh x kw conv
  I -> r (the host's stride/padding) then a 1x1 conv r -> O;
- rank: `rank` (32), capped at floor(max_rank_fraction * min(O, I*kh*kw)) (fraction 0.1) so a
  tiny layer is not mostly branch. The micro and tiny models have 8..64-channel layers, where the
  cap decides the rank; 0.1 keeps the branch as large relative to the layer as rank 32 is on
  SD's 320-channel layers (32 / 320), so the tiny study does not hand SVDQuant (or QuantFace,
  whose two branches share the same total budget) a far larger FP16 branch than the paper's;
- smoothing reuses quant/smoothing.py with SmoothQuant's fold rules (folding is exact and free;
  the rest runs online and is counted); alpha is one value for all layers (`alpha`, 0.5) instead
  of the per-layer search, which needs a quantized forward per candidate and layer;
- the branch is rounded to FP16 and R formed from the rounded factors (exact in FP);
  `lowrank_iters` (1) > 1 enables the iterative refit, scored by weight error ||W - L - Q(R)||;
- groups of 64 along input channels for weights and activations where the channel count allows;
  otherwise the largest divisor of C <= 64 (so a 48-channel input uses one group of 48, i.e.
  per token / per output channel). Activations asymmetric dynamic (stand-in for the code's
  unsigned INT4 for non-negative inputs plus `shift_activations`);
- attention matmuls quantized at the activation bits, per-token dynamic, like every method here
  (nunchaku runs attention in 16 bit; DESIGN §5 keeps them at the activation bits for all).

Options (config `method_options.svdquant`): rank (32), alpha (0.5), group_size (64),
lowrank_iters (1), online (true), max_rank_fraction (0.1).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from quantface.methods.base import check_options, smoothable
from quantface.models.base import RestorerBundle
from quantface.quant.apply import calibrate_weights
from quantface.quant.calibration import CalibrationSet
from quantface.quant.layers import InputTransform, LayerQuant, QuantLayerMixin, wrap_model
from quantface.quant.lowrank import capped_rank, lowrank_split
from quantface.quant.observers import MinMaxObserver
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, qparams_from_range, quantize_tensor
from quantface.quant.smoothing import apply_smoothing, calib_absmax, smoothing_groups
from quantface.registry import METHODS

DEFAULTS: dict[str, Any] = {
    "rank": 32,
    "alpha": 0.5,
    "group_size": 64,
    "lowrank_iters": 1,
    "online": True,
    "max_rank_fraction": 0.1,
}


def group_spec(bits: int, channels: int, group: int, **kw: Any) -> QuantSpec:
    """Groups of the largest divisor of `channels` <= group along `channel_dim`."""
    g = max(d for d in range(1, min(group, channels) + 1) if channels % d == 0)
    if g == channels:
        return QuantSpec(bits, granularity="token", **kw)
    return QuantSpec(bits, granularity="group", group_size=g, **kw)


def _rtn(spec: QuantSpec):
    def q(w: torch.Tensor) -> torch.Tensor:
        obs = MinMaxObserver(spec)
        obs.update(w)
        scale, zero = qparams_from_range(*obs.compute(), spec)
        return quantize_tensor(w, scale, zero, spec)

    return q


@METHODS.register("svdquant")
class SVDQuant:
    """SVDQuant: smoothing, a 16-bit rank-32 SVD branch, and the quantized residual."""

    name = "svdquant"

    def quantize(
        self, fp: RestorerBundle, calib: CalibrationSet, plan: BitPlan, cfg: dict[str, Any]
    ) -> RestorerBundle:
        opts = check_options(cfg, DEFAULTS, self.name)
        model = copy.deepcopy(fp)
        sites = model.quant_targets()
        layers = smoothable(model, plan)
        groups = smoothing_groups(model, layers)
        if not opts["online"]:
            groups = [g for g in groups if g.fold != "online"]
        online = {n for g in groups if g.fold == "online" for n in g.layers}
        gs = int(opts["group_size"])
        layout = {}
        for name, bits in plan.items():
            kind = sites[name]
            if kind == "matmul":
                a = QuantSpec(bits.a_bits, False, "token", dynamic=True, channel_dim=-1)
                layout[name] = LayerQuant(kind, a, a)
                continue
            mod = model.get_submodule(name)
            o, fan_in = mod.weight.shape[0], mod.weight[0].numel()
            c_in = mod.weight.shape[1]
            a_dim = 1 if kind == "conv2d" else -1
            a = group_spec(bits.a_bits, c_in, gs, dynamic=True, channel_dim=a_dim)
            w = group_spec(bits.w_bits, c_in, gs, symmetric=True, channel_dim=1)
            if w.granularity == "token":  # one group spans all inputs: per output channel
                w = QuantSpec(bits.w_bits, True, "channel", channel_dim=0)
            rank = capped_rank(opts["rank"], o, fan_in, float(opts["max_rank_fraction"]))
            rank = rank if name in layers else 0
            layout[name] = LayerQuant(kind, a, w, InputTransform(name in online, False, rank))
        wrap_model(model, layout)
        absmax = {n: calib_absmax(calib.input_stats(n)) for g in groups for n in g.layers}
        apply_smoothing(model, groups, absmax, float(opts["alpha"]))
        for name in layers:
            mod = model.get_submodule(name)
            assert isinstance(mod, QuantLayerMixin)
            rank = mod.transform_spec().lowrank
            if rank == 0:
                continue
            quant = _rtn(mod.weight_quantizer.spec)
            l1, l2, r = lowrank_split(mod.weight, rank, quant, int(opts["lowrank_iters"]))
            mod.lowrank.set_factors(l1, l2)
            with torch.no_grad():
                mod.weight.copy_(r)
        calibrate_weights(model, "minmax")
        return model.eval()
