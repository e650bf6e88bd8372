"""Block-wise output reconstruction (BRECQ, Li et al. 2021), as Q-Diffusion runs it on a UNet.

The model is cut into the units Q-Diffusion reconstructs (`scripts/txt2img.py: recon_model`):
its blocks are the ResNet blocks, the transformer blocks (diffusers `BasicTransformerBlock`) and
the attention blocks (a VAE mid-block `Attention`); every quantized layer in no block is a unit of
its own (layer reconstruction): the transformers' proj_in/proj_out, the time-embedding linears,
the samplers' convs, conv_in/conv_out. Unit by unit, in execution order, the unit's input is
recorded from the *quantized* network (units before it already reconstructed: errors upstream
are seen and compensated) and its target output from the FP network on the same image, and a
few parameters of the unit (rounding variables, step sizes) are trained to make `block_q(x_q)`
match `block_fp(x_fp)`.

Inputs are captured with forward pre-hooks that record (args, kwargs) and then abort the forward
pass, so capturing the k-th block costs only the part of the network before it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor, nn
from tqdm import tqdm

from quantface.errors import NumericsError
from quantface.quant.layers import QuantLayerMixin, QuantMatMul
from quantface.quant.target import QuantTarget
from quantface.timing import log_timing, timed

log = logging.getLogger(__name__)

# Q-Diffusion's BaseQuantBlocks (qdiff/quant_block.py: get_specials) in diffusers' names:
# QuantResBlock/QuantResnetBlock, QuantBasicTransformerBlock, QuantAttnBlock. Anything else
# (SpatialTransformer's proj_in/out, samplers, the time embedding) is recursed into there, so its
# layers are reconstructed one by one.
BLOCK_TYPES: tuple[type[nn.Module], ...] = (ResnetBlock2D, BasicTransformerBlock, Attention)


class _Stop(Exception):
    """Raised by a capture hook to end the forward pass early."""


@dataclass(frozen=True)
class Block:
    name: str
    layers: tuple[str, ...]  # quantized Linear/Conv2d sites inside it (full names)


def find_blocks(
    model: QuantTarget,
    images: Tensor,
    block_types: tuple[type[nn.Module], ...] = BLOCK_TYPES,
) -> list[Block]:
    """Reconstruction units covering every quantized layer, in execution order.

    A unit is the outermost module of one of `block_types` holding a quantized site; every
    quantized layer outside such a module is a unit of its own.
    """
    quant = {n for n, m in model.named_modules() if isinstance(m, QuantLayerMixin | QuantMatMul)}
    chosen: list[str] = []
    for name, mod in model.named_modules():
        inside = any(name.startswith(c + ".") for c in chosen)
        if (
            isinstance(mod, block_types)
            and not inside
            and any(q.startswith(name + ".") for q in quant)
        ):
            chosen.append(name)
    covered = {q for q in quant for c in chosen if q.startswith(c + ".")}
    chosen += [
        n for n in sorted(quant - covered) if isinstance(model.get_submodule(n), QuantLayerMixin)
    ]
    order: dict[str, int] = {}
    handles = []
    for name in chosen:

        def hook(mod, args, name=name):
            order.setdefault(name, len(order))

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.restore(images[:1])
    finally:
        for h in handles:
            h.remove()
    chosen = sorted((n for n in chosen if n in order), key=order.__getitem__)
    layer_sites = {n for n in quant if isinstance(model.get_submodule(n), QuantLayerMixin)}
    return [
        Block(c, tuple(q for q in sorted(layer_sites) if q == c or q.startswith(c + ".")))
        for c in chosen
    ]


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, tuple | list):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def first_tensor(out: Any) -> Tensor:
    """A block's main output (diffusers blocks return a tensor, a tuple or a ModelOutput)."""
    return out if isinstance(out, Tensor) else out[0]


@torch.no_grad()
def capture(
    model: QuantTarget,
    block: str,
    images: Tensor,
    batch_size: int,
    what: str,
    forward: Callable[[int], Any] | None = None,
) -> list[Any]:
    """Per image batch: the block's (args, kwargs) ("input") or its main output ("output").

    `forward(i)` runs batch i through the network in place of `model.restore` (a caller that
    keeps intermediates upstream of the block: quantface/models/staged.py)."""
    mod = model.get_submodule(block)
    got: list[Any] = []

    def pre(m, args, kwargs):
        got.append((_detach(args), _detach(kwargs)))
        raise _Stop

    def post(m, args, kwargs, out):
        got.append(first_tensor(out).detach())
        raise _Stop

    h = (
        mod.register_forward_pre_hook(pre, with_kwargs=True)
        if what == "input"
        else mod.register_forward_hook(post, with_kwargs=True)
    )
    try:
        with timed(f"capture_{what}", len(images)):
            for i, batch in enumerate(images.split(batch_size)):
                try:
                    forward(i) if forward is not None else model.restore(batch)
                except _Stop:
                    pass
    finally:
        h.remove()
    return got


@torch.no_grad()
def capture_outputs(
    model: QuantTarget, blocks: list[str], images: Tensor, batch_size: int, max_bytes: int
) -> dict[str, list[Tensor]]:
    """The main output of many blocks from one forward per image batch: what `capture(...,
    "output")` gives block by block, for as many blocks (in execution order) as fit `max_bytes`.

    For a network that does not change (the FP targets of a reconstruction) one pass replaces
    a forward per block; the same operations on the same inputs give bitwise the same outputs.
    Blocks past the budget are left out (the caller captures those one by one)."""
    wanted = set(blocks)
    got: dict[str, list[Tensor]] = {}
    used = 0
    hooks = []

    def hook(name: str):
        def post(m, args, out):
            nonlocal used
            if name not in wanted or name in seen:
                return
            seen.add(name)
            y = first_tensor(out).detach()
            if name not in got:  # the first batch decides which blocks fit
                if used + y.numel() * y.element_size() * n_batches > max_bytes:
                    wanted.discard(name)
                    return
                used += y.numel() * y.element_size() * n_batches
                got[name] = []
            got[name].append(y)

        return post

    batches = images.split(batch_size)
    n_batches = len(batches)
    for name in blocks:
        hooks.append(model.get_submodule(name).register_forward_hook(hook(name)))
    try:
        with timed("capture_outputs", len(images)):
            for batch in batches:
                seen: set[str] = set()
                model.restore(batch)
    finally:
        for h in hooks:
            h.remove()
    return got


def lp_loss(pred: Tensor, target: Tensor, p: float) -> Tensor:
    """BRECQ/Q-Diffusion's reconstruction loss: |pred - target|^p summed over dim 1, averaged."""
    err = (pred - target).abs().pow(p)
    return err.sum(1).mean() if err.dim() > 1 else err.mean()


@dataclass(frozen=True)
class ReconConfig:
    iters: int = 100
    lr: float = 1e-3
    p: float = 2.0
    cosine: bool = False
    seed: int = 0


def reconstruct(
    block: nn.Module,
    inputs: list[Any],
    targets: list[Tensor],
    groups: list[dict],
    cfg: ReconConfig,
    regularizer: Callable[[int], Tensor | None] | None = None,
    after_step: Callable[[], None] | None = None,
    desc: str = "reconstruct",
    stage: str = "recon_iter",
) -> list[float]:
    """Adam on `groups` minimising lp(block(x_q), y_fp) (+ regularizer(step)); returns the curve.

    One step = one recorded calibration batch, drawn at random (seeded). `stage` names the
    timing line (quantface/timing.py) of the loop.
    """
    params = [p for g in groups for p in g["params"]]
    if cfg.iters <= 0 or not params or not inputs:
        return []
    optim = torch.optim.Adam(groups, lr=cfg.lr)
    sched = (
        torch.optim.lr_scheduler.LambdaLR(
            optim, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.iters))
        )
        if cfg.cosine
        else None
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    curve = []
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.iters), desc=desc, disable=None, leave=False):
        i = int(torch.randint(len(inputs), (1,), generator=gen))
        args, kwargs = inputs[i]
        rec = lp_loss(first_tensor(block(*args, **kwargs)), targets[i], cfg.p)
        loss = rec
        reg = regularizer(step) if regularizer is not None else None
        if reg is not None:
            loss = loss + reg
        if not torch.isfinite(loss):
            raise NumericsError(
                f"{desc}: reconstruction diverged at step {step} (loss {loss.item()}): lower the "
                "learning rate in method_options; nothing was written"
            )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step()
        curve.append(rec.item())
    log.info(
        "%s: %d steps, rec loss %.3e -> %.3e (%.1f s)",
        desc,
        cfg.iters,
        curve[0],
        curve[-1],
        time.perf_counter() - t0,
    )
    log_timing(stage, cfg.iters, time.perf_counter() - t0)
    return curve


@torch.no_grad()
def block_error(block: nn.Module, inputs: list[Any], targets: list[Tensor], p: float = 2.0):
    """Mean reconstruction loss over all recorded batches."""
    errs = [
        lp_loss(first_tensor(block(*a, **k)), t, p).item()
        for (a, k), t in zip(inputs, targets, strict=True)
    ]
    return sum(errs) / len(errs)
