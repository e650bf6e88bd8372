"""Output distillation from the full-precision restorer, shared by methods that fine-tune.

QuantFace's QD-LoRA and EfficientDM both train a few parameters of the fake-quantized model so
that its restored image matches the frozen FP model's restored image on calibration LQ inputs.
The FP targets are computed once and cached (the FP model is never run twice on an image).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from quantface.errors import NumericsError
from quantface.quant.target import QuantTarget
from quantface.timing import log_timing, timed

log = logging.getLogger(__name__)

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": lambda a, b: (a - b).pow(2).mean(),
    "l1": lambda a, b: (a - b).abs().mean(),
}


# Above this input side, distillation recomputes each UNet/VAE block in the backward pass.
CHECKPOINT_ABOVE_PX = 128


@contextmanager
def block_checkpointing(model: QuantTarget, side: int) -> Iterator[None]:
    """Gradient checkpointing of the UNet and VAE blocks while distilling inputs of `side` px
    (every diffusers model among the model's children that supports it).

    Why: one full-size step keeps every block's activations for the backward pass, attention
    maps at 4,096 tokens and 512 x 512 VAE feature maps among them, many GB beside the 3.5 GB
    model. Recomputing each block in the backward costs about one more forward and bounds the
    kept graph to the block inputs. The recomputation is the same computation, so gradients are
    unchanged; at <= CHECKPOINT_ABOVE_PX (the tiny model's 128 px) nothing changes at all.
    """
    parts = [
        m
        for m in model.children()
        if getattr(m, "_supports_gradient_checkpointing", False) and side > CHECKPOINT_ABOVE_PX
    ]
    for m in parts:
        m.enable_gradient_checkpointing()
    try:
        yield
    finally:
        for m in parts:
            m.disable_gradient_checkpointing()


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 4
    loss: str = "l2"
    seed: int = 0
    clip_grad_norm: float | None = 1.0  # None: no clipping (EfficientDM's code has none)


def random_crops(images: Tensor, size: int, per_image: int, seed: int) -> Tensor:
    """`per_image` seeded square crops of every image (distilling on crops is ~(H/size)^2 cheaper).

    Both models see the same crops, so the target is still the FP model's output for exactly
    the input the quantized model gets.
    """
    h, w = images.shape[-2:]
    if size >= min(h, w):
        return images
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for img in images:
        for _ in range(per_image):
            y = int(torch.randint(h - size + 1, (1,), generator=gen))
            x = int(torch.randint(w - size + 1, (1,), generator=gen))
            crops.append(img[:, y : y + size, x : x + size])
    return torch.stack(crops)


@torch.no_grad()
def fp_targets(fp: QuantTarget, images: Tensor, batch_size: int) -> Tensor:
    """The FP model's restored images: the distillation targets, computed once."""
    with timed("fp_targets", len(images)):
        return torch.cat([fp.restore(b, clamp=False) for b in images.split(batch_size)])


def distill(
    model: QuantTarget,
    images: Tensor,
    targets: Tensor,
    groups: list[dict],
    cfg: DistillConfig,
    after_step: Callable[[], None] | None = None,
    stage: str = "distill_step",
) -> list[float]:
    """Adam on `groups` (torch param groups) minimising d(model(lq), fp(lq)); cosine lr decay.

    Returns the loss curve. A non-finite loss stops with a NumericsError instead of leaving a NaN
    model behind. `after_step` runs after each optimiser step (e.g. to keep step sizes
    positive); `stage` names the timing line (quantface/timing.py) of the whole loop.
    """
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown distillation loss {cfg.loss!r}; known: {', '.join(LOSSES)}")
    loss_fn = LOSSES[cfg.loss]
    params = [p for g in groups for p in g["params"]]
    if cfg.steps <= 0 or not params:
        return []
    optim = torch.optim.Adam(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    curve: list[float] = []
    t0 = time.perf_counter()
    model.train(False)  # no dropout/batch statistics: only the chosen parameters change
    with block_checkpointing(model, images.shape[-1]):
        for step in tqdm(range(cfg.steps), desc="distill", disable=None):
            idx = torch.randperm(len(images), generator=gen)[: cfg.batch_size].to(images.device)
            loss = loss_fn(model.restore(images[idx], clamp=False), targets[idx])
            if not torch.isfinite(loss):
                raise NumericsError(
                    f"distillation diverged at step {step} (loss {loss.item()}): lower the "
                    "learning rate in method_options; nothing was written"
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            optim.step()
            sched.step()
            if after_step is not None:
                after_step()
            curve.append(loss.item())
            if step % 25 == 0 or step == cfg.steps - 1:
                log.info(
                    "distill step %d/%d loss %.3e (%.1f s)",
                    step + 1,
                    cfg.steps,
                    curve[-1],
                    time.perf_counter() - t0,
                )
    log_timing(stage, cfg.steps, time.perf_counter() - t0)
    return curve
