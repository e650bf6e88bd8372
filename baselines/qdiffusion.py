"""Q-Diffusion (Li et al., ICCV 2023): BRECQ block reconstruction with AdaRound, learned act steps.

What the paper/code does (`Xiuyu-Li/q-diffusion`):
- weights per output channel, asymmetric, initialised by the Lp-2.4 clip search (80 x 1 %), then
  AdaRound rounding variables (rectified sigmoid, ζ 1.1, γ −0.1) learned per block with BRECQ's
  loss `Σ_c |Ŷ − Y|^2` + 0.01 · Σ(1 − |2h − 1|^β), β 20 → 2 after 20 % warm-up, Adam lr 1e-3,
  20k iterations; every activation quantizer of the network off meanwhile (attention operands
  included: `set_quant_state(True, False)`), the block's input read from that weight-quantized
  network (`asym`) and its target from the FP one;
- activations per tensor, asymmetric, static, Lp-2.4 search init; the SD recipe (`txt2img.py
  --running_stat`, README: at `--act_bit 8`) then overwrites every range by a running average
  of the batch min/max (momentum 0.95) over the calibration set, weights and activations
  quantized; then their step sizes are learned per block (LSQ) with p = 2.4, Adam lr 4e-4,
  cosine, 5k iterations;
- split shortcut quantization: the decoder's ResNet shortcut 1x1 conv reads the concatenation
  [up-path, skip]; its two channel groups get their own activation and weight quantizers;
- attention: q/k, softmax output P and v quantized; P at `sm_abit` = 16 bit (README SD recipe);
- timestep-aware calibration: inputs sampled over the denoising trajectory.

Adaptation here:
- one-step restorer: the trajectory is one step (t = 399), so timestep-aware calibration
  collapses to the restorer's own inputs on the calibration LQ faces (the shared calibration set);
- quantized: every UNet and VAE Linear/Conv2d and attention matmul (the suite's common sites);
  Q-Diffusion has no VAE recipe, so VAE units are reconstructed with the same loop;
- units as the code's `recon_model`: blocks are diffusers ResnetBlock2D, BasicTransformerBlock
  and (VAE) Attention; every other layer is reconstructed alone (proj_in/proj_out, the samplers'
  convs, the time-embedding linears, conv_in/conv_out, the VAE quant convs);
- weight stage: "activation" means role, not attribute name (`set_quant_mode`), so QK^T's K^T
  and AV's V, held in the matmul's `weight_quantizer` slot, are unquantized there too;
- all stages run per unit in one sweep (weights, then the running min-max, then activations,
  with the unit's weights already hardened); the code runs three sweeps (all weights; the
  running min-max over the whole network; all activations, reading FP inputs), left out to cut
  the cost: the activation stages here read the unit's input from the fully quantized network
  (upstream units final), and the running ranges start from the first batch (the code's
  16-sample initialisation batch) then average over every batch;
- `running_stat: auto` (default) runs the running min-max on the activation quantizers of 8 or
  more bits only: the official commands use it at 8-bit activations and no official recipe
  exists below (there the Lp-2.4 range is the recipe's own; an unclipped min-max range at 4
  bits is what the code's 5k LSQ iterations would have to undo, and small budgets cannot);
  `true` runs it on every activation quantizer, `false` on none;
- where it runs the Lp-2.4 init is overwritten before it is ever used quantized, as in the
  code; it stays because the unit search runs the quantized model once before any unit is done;
- the units' FP targets come from one FP forward per batch (hooks on every unit) while they
  fit `FP_TARGET_BYTES`, not one early-stopped FP forward per unit: the FP network never
  changes, so they are bitwise the same tensors;
- a unit's input is captured from the latest intermediate upstream units can no longer change
  (quantface/models/staged.py: the LQ latent for a UNet unit, the restored latent for a decoder
  unit), per network state: bitwise the full pass's inputs, at about half the capture time;
- `av_matmul`'s first operand (softmax output P) at `sm_abit` bits (16): recorded in plan.json
  (that site's a_bits = 16) with a note, and its BOPs are counted at 16 x a_bits in cost.json;
- iteration counts are config options (small in the embedded default; the paper's in
  config/paper.yaml).

Quantizers: `native_scheme` (from `w_init`, `a_init`; the 16-bit softmax from `sm_abit`); a
given scheme replaces them and its 16-bit softmax (no exceptions), AdaRound and LSQ unchanged.

Options (config `method_options.qdiffusion`): `QDiffusionOptions` below, among them switches for
measuring the official recipe's parts (config/baseline_fixes.yaml), each defaulting to the
code's: units, weight_stage_attn_operands.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import Tensor, nn

from quantface.methods.options import Options
from quantface.methods.pipeline import Recipe
from quantface.models.base import RestorerBundle
from quantface.models.staged import StagedRestore
from quantface.quant.adaround import adaround, temperature
from quantface.quant.calibration import CalibrationSet
from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.learnable import clamp_scales_, learnable_scales, static_quantizers
from quantface.quant.observers import RunningMinMaxObserver
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, UniformQuantizer
from quantface.quant.reconstruction import (
    BLOCK_TYPES,
    Block,
    ReconConfig,
    capture,
    capture_outputs,
    find_blocks,
    reconstruct,
)
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import LayerQuant
from quantface.quant.wrap import set_quant_mode
from quantface.registry import METHODS
from quantface.subsample import spaced_subset
from quantface.timing import log_timing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QDiffusionOptions(Options):
    """Q-Diffusion's options (config `method_options.qdiffusion`; config/README.md).

    w_iters, a_iters: AdaRound / LSQ iterations per unit; w_lr, a_lr: their Adam learning
    rates; round_weight: lambda of AdaRound's regularizer; b_start, b_end, warmup: its beta
    annealing; sm_abit: bits of the softmax output; w_init, a_init: range initialisation;
    split_shortcut: separate quantizers for the decoder shortcut halves; running_stat: EMA
    min-max before LSQ (True all, False none, "auto" the >= 8-bit quantizers); units: "blocks"
    (the code's) or "transformer" (a whole Transformer2DModel as one unit);
    weight_stage_attn_operands: "off" (the code's) or "quantized" (K^T and V stay quantized in
    the weight stage); n_samples, batch_size: calibration images used, batch per step;
    max_units: reconstruct only this many units, evenly spaced over the order, the rest keep
    their initial ranges and nearest rounding (None, the code's: every unit; a scale run's
    budget cut, so benchmarks/paper_cost.py can bill all units from a few measured ones).
    """

    training_budget = ("w_iters", "a_iters")  # the options that are its training budget

    w_iters: int = 60
    a_iters: int = 30
    w_lr: float = 1e-3
    a_lr: float = 4e-4
    round_weight: float = 0.01
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2
    sm_abit: int = 16
    w_init: Literal["minmax", "mse", "percentile"] = "mse"
    a_init: Literal["minmax", "mse", "percentile"] = "mse"
    split_shortcut: bool = True
    running_stat: Literal[True, False, "auto"] = "auto"
    units: Literal["blocks", "transformer"] = "blocks"  # the keys of UNIT_TYPES
    weight_stage_attn_operands: Literal["off", "quantized"] = "off"
    n_samples: int = 16
    batch_size: int = 4
    max_units: int | None = None


# `running_stat`: "auto" runs it on the >= 8-bit activation quantizers only, as the official
# commands use it (README: SD and LSUN-bedroom at --act_bit 8; none at lower bits)
RUNNING_STAT_MIN_BITS = {True: 0, "auto": 8}
# The units' FP targets are taken in one FP pass while they fit this much memory (the tiny
# default: all of them, ~15 s of a W4A4 job saved); the rest are captured unit by unit.
FP_TARGET_BYTES = 1 << 30
SOFTMAX_NOTE = "softmax output P of the AV matmul kept at {b} bit (Q-Diffusion --sm_abit {b})"


def _bits_of(module: nn.Module, param: nn.Parameter) -> int:
    for q in module.modules():
        if q._parameters.get("scale") is param:
            return q.spec.bits
    return 0


def shortcut_splits(model: nn.Module) -> dict[str, int]:
    """Decoder ResNet shortcut convs reading [up-path, skip] -> channels of the up-path part.

    diffusers' up blocks concatenate `(hidden_states, res_hidden_states)` before each resnet; the
    up-path tensor has the previous resnet's output channels (the mid block's for the first one).
    """
    splits: dict[str, int] = {}
    for uname, unet in model.named_modules():
        if not isinstance(unet, UNet2DConditionModel):
            continue
        prev = unet.mid_block.resnets[-1].out_channels if unet.mid_block is not None else None
        for i, block in enumerate(unet.up_blocks):
            for j, res in enumerate(block.resnets):
                sc = res.conv_shortcut
                if prev is not None and sc is not None and 0 < prev < sc.in_channels:
                    splits[f"{uname}.up_blocks.{i}.resnets.{j}.conv_shortcut"] = prev
                prev = res.out_channels
    return splits


UNIT_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "blocks": BLOCK_TYPES,  # the code's recon_model units (see the module docstring)
    "transformer": (ResnetBlock2D, Transformer2DModel, Attention),  # ablation: coarser units
}


@contextlib.contextmanager
def activations_off(root: nn.Module, attn_operands: bool = True) -> Iterator[None]:
    """Every activation quantizer under root off inside the block (all of them start "quant").

    `attn_operands=False` leaves the attention matmuls' second operands (K^T, V) quantized: what
    selecting quantizers by attribute name did (an ablation of the earlier port, not the code).
    """
    set_quant_mode(root, "off", "act")
    if not attn_operands:
        for mod in root.modules():
            if isinstance(mod, QuantMatMul):
                mod.weight_quantizer.mode = "quant"
    try:
        yield
    finally:
        set_quant_mode(root, "quant", "act")


@torch.no_grad()
def running_stat(
    unit: nn.Module, inputs: list[Any], momentum: float = 0.95, min_bits: int = 0
) -> None:
    """Q-Diffusion's `--running_stat` on one unit: ranges <- running average of batch min/max.

    As `act_momentum_update` (`qdiff/quant_layer.py`), each static activation quantizer updates
    its range on its input and then quantizes with it, weights and activations quantized, so a
    later quantizer sees the earlier ones' quantized output. The code's ranges start from its
    initialisation batch and then average over every batch: here the first batch, then all.
    Only quantizers of at least `min_bits` bits take part (the others keep their Lp-2.4 range).
    """
    chosen = [q for q in static_quantizers(unit, "act") if q.spec.bits >= min_bits]
    observers = {id(q): RunningMinMaxObserver(q.spec, momentum) for q in chosen}

    def update(q: UniformQuantizer, args: tuple[Tensor, ...]) -> None:
        obs = observers[id(q)]
        obs.update(args[0])
        q.set_range(*obs.compute())

    handles = [q.register_forward_pre_hook(update) for q in chosen]
    try:
        for args, kwargs in [inputs[0], *inputs]:
            unit(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()


@METHODS.register("qdiffusion")
class QDiffusion:
    """Q-Diffusion: BRECQ + AdaRound weights, LSQ activations, split shortcuts, 16-bit softmax."""

    label = "Q-Diffusion"  # how tables and figures name it

    name = "qdiffusion"
    options = QDiffusionOptions  # its method_options

    def native_scheme(self, opts: QDiffusionOptions) -> QuantScheme:
        """Per-channel asym weights from `w_init`, per-tensor static asym activations from
        `a_init` (both the Lp-2.4 search); the softmax output at `sm_abit`."""
        return QuantScheme(weight_init=opts.w_init, act_init=opts.a_init)

    def recipe(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        calib: CalibrationSet,
        plan: BitPlan,
        opts: QDiffusionOptions,
        scheme: QuantScheme,
    ) -> Recipe:
        """Split decoder shortcuts, the softmax output at `sm_abit`, Lp-2.4 ranges observed on
        the `n_samples` calibration images; then every unit reconstructed (`max_units`: a
        spaced subset)."""
        sites = model.quant_targets()
        splits = shortcut_splits(model) if opts.split_shortcut else {}
        layout = scheme.layout(model, sites, plan, splits=splits)
        notes = dict.fromkeys(
            (n for n in splits if n in layout),
            "split shortcut quantizer: [up-path, skip] quantized separately",
        )
        sm = opts.sm_abit
        overrides = {}
        for name, lq in layout.items():
            if scheme.exceptions and name.endswith("av_matmul") and sm > lq.a.bits:
                a = QuantSpec(sm, lq.a.symmetric, "tensor", channel_dim=-1)
                overrides[name] = LayerQuant(lq.kind, a, lq.w)
                notes[name] = SOFTMAX_NOTE.format(b=sm)
        images = calib.images[: opts.n_samples]

        def reconstruct_units(model: RestorerBundle) -> dict[str, str]:
            fp.eval()  # only read (block targets under no_grad): a second 3.5 GB copy buys nothing
            model.eval().requires_grad_(False)
            t0 = time.perf_counter()
            blocks = find_blocks(model, images, UNIT_TYPES[opts.units])
            log_timing("find_blocks", len(blocks), time.perf_counter() - t0)
            chosen = spaced_subset(blocks, opts.max_units) or blocks
            log_timing("units_reconstructed", len(chosen), 0.0)
            names = {blk.name for blk in chosen}
            order = [blk.name for blk in blocks if blk.name in names]
            targets = capture_outputs(fp, order, images, opts.batch_size, FP_TARGET_BYTES)
            batches = list(images.split(opts.batch_size))
            stages = {state: StagedRestore(model, batches) for state in ("weights", "all")}
            for k, blk in enumerate(blocks):
                if blk.name in names:
                    self._reconstruct_unit(
                        model,
                        fp,
                        blk,
                        images,
                        opts,
                        f"{k}:{blk.name}",
                        stages,
                        targets.pop(blk.name, None),
                    )
            log.info(
                "qdiffusion: %d of %d units reconstructed in %.1f s",
                len(chosen),
                len(blocks),
                time.perf_counter() - t0,
            )
            if len(chosen) == len(blocks):
                return {}
            return {
                "qdiffusion": f"max_units: {len(chosen)} of {len(blocks)} units reconstructed "
                "(evenly spaced); the others keep their initial ranges and nearest rounding"
            }

        return Recipe(
            plan,
            splits=splits,
            overrides=overrides,
            notes=notes,
            range_images=images,
            range_batch=opts.batch_size,
            refine=reconstruct_units,
        )

    def _reconstruct_unit(
        self,
        model: RestorerBundle,
        fp: RestorerBundle,
        blk: Block,
        images: Tensor,
        opts: QDiffusionOptions,
        desc: str,
        stages: dict[str, StagedRestore],
        targets: list[Tensor] | None = None,
    ) -> None:
        """Weight stage, running min-max, activation stage of one unit (see the module docstring).
        `targets`: the unit's FP outputs when already captured (else captured here). `stages`:
        the intermediates upstream of the unit per network state ("weights": activations off;
        "all"), kept from the first unit that needs them: units run in execution order, so what
        is upstream is final by then and each capture is bitwise the full pass's.

        The weight stage reads its input from the network with *no* activation quantized, as the
        code's `asym` capture under `set_quant_state(True, False)`; the activation stages read it
        from the fully quantized network (upstream units final).
        """
        bs = opts.batch_size
        module = model.get_submodule(blk.name)
        if targets is None:
            targets = capture(fp, blk.name, images, bs, "output")
        if blk.layers:
            layers = {n: model.get_submodule(n) for n in blk.layers}
            with activations_off(model, opts.weight_stage_attn_operands == "off"):
                run = partial(stages["weights"].run, blk.name)
                inputs = capture(model, blk.name, images, bs, "input", run)
                self._weights(module, layers, inputs, targets, opts, f"{desc} W")
        run = partial(stages["all"].run, blk.name)
        inputs = capture(model, blk.name, images, bs, "input", run)
        if opts.running_stat is not False:
            running_stat(module, inputs, min_bits=RUNNING_STAT_MIN_BITS[opts.running_stat])
        self._activations(module, inputs, targets, opts, f"{desc} A")

    @staticmethod
    def _weights(
        module: nn.Module,
        layers: dict[str, QuantLayerMixin],
        inputs: list[Any],
        targets: list[Tensor],
        opts: QDiffusionOptions,
        desc: str,
    ) -> None:
        """AdaRound, called with every activation quantizer off (Q-Diffusion's weight stage)."""
        iters = opts.w_iters
        b_range = (opts.b_start, opts.b_end)
        lam = opts.round_weight
        with adaround(layers) as rounders:
            params = [p for r in rounders.values() for p in r.parameters()]

            def reg(step: int) -> Tensor | None:
                beta = temperature(step, iters, opts.warmup, b_range)
                if beta is None:
                    return None
                return lam * sum(r.regularizer(beta) for r in rounders.values())

            cfg = ReconConfig(iters, opts.w_lr, 2.0)
            reconstruct(
                module,
                inputs,
                targets,
                [{"params": params}],
                cfg,
                reg,
                desc=desc,
                stage="adaround_iter",
            )

    @staticmethod
    def _activations(
        module: nn.Module,
        inputs: list[Any],
        targets: list[Tensor],
        opts: QDiffusionOptions,
        desc: str,
    ) -> None:
        """LSQ step sizes of the block's activation quantizers, p = 2.4, cosine (act stage)."""
        with learnable_scales(module, "act") as params:
            # a 16-bit quantizer (softmax P) is not learned, as in Q-Diffusion (its step, ~1e-5,
            # is below one Adam step)
            params = [p for p in params if _bits_of(module, p) < 16]
            cfg = ReconConfig(opts.a_iters, opts.a_lr, 2.4, cosine=True)
            reconstruct(
                module,
                inputs,
                targets,
                [{"params": params}],
                cfg,
                after_step=lambda: clamp_scales_(params),
                desc=desc,
                stage="lsq_iter",
            )
