"""Train a restorer on synthetic face pairs (the embedded default's `prepare_model`).

Three stages, mirroring how OSDFace is built (a pretrained VAE, then a restorer in its latent
space), at a cost a 2-core CPU affords:
  1. autoencoder: the VAE learns to reconstruct HQ and LQ faces; skipped when the model starts
     from a pretrained VAE (the default for `tiny`, made once by `pretrain_vae`);
  2. latent restoration: with the VAE frozen, the UNet and the visual prompt embedder learn to
     map the LQ latent to the HQ latent in one step at t=399 (no decoder in the loop: cheap);
  3. pixel fine-tuning: a few end-to-end steps with an L1 loss on the restored image, through the
     frozen decoder (as OSDFace, whose SD VAE stays frozen; `tune_decoder` tunes it too).
HQ faces come from a pre-rendered pool; every step degrades them afresh with its own seeds, so
the model sees many more LQ variants than there are faces. Faces are rendered and degraded on
the CPU (numpy, seeded) and only the batches move to the training device, so the data a model
is trained on does not depend on where it is trained.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from quantface.data.degradation import DegradationConfig, degrade
from quantface.data.synthetic_faces import generate_face
from quantface.io import to_tensor
from quantface.models.base import RestorerBundle
from quantface.models.train_defaults import DEFAULT_TRAIN
from quantface.registry import MODELS

log = logging.getLogger(__name__)


class PairSampler:
    """Seeded random batches of (LQ, HQ) tensors from a pool of rendered HQ faces."""

    def __init__(
        self,
        size: int,
        opts: dict[str, Any],
        degradation: dict[str, Any],
        seed: int,
        device: str | torch.device = "cpu",
    ):
        t0 = time.perf_counter()
        self.device = torch.device(device)
        base = opts["face_seed_offset"] + seed * opts["pool_size"]
        self.pool = np.stack([generate_face(base + i, size) for i in range(opts["pool_size"])])
        log.info("rendered %d training faces in %.1f s", len(self.pool), time.perf_counter() - t0)
        self.rng = np.random.default_rng(seed)
        self.deg = DegradationConfig.from_dict(degradation)

    def batch(self, n: int, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hq = self.pool[self.rng.integers(len(self.pool), size=n)]
        flip = self.rng.random(n) < 0.5
        hq = np.where(flip[:, None, None, None], hq[:, :, ::-1], hq)
        lq = np.stack([degrade(np.ascontiguousarray(im), self.rng, self.deg) for im in hq])
        hq_t = torch.stack([to_tensor(np.ascontiguousarray(im)) for im in hq])
        lq_t = torch.stack([to_tensor(im) for im in lq])
        if crop and crop < hq_t.shape[-1]:
            y, x = (int(v) for v in self.rng.integers(0, hq_t.shape[-1] - crop + 1, size=2))
            hq_t = hq_t[..., y : y + crop, x : x + crop]
            lq_t = lq_t[..., y : y + crop, x : x + crop]
        return lq_t.to(self.device), hq_t.to(self.device)


def _run_stage(name: str, steps: int, params: list, lr: float, loss_fn) -> None:
    """AdamW with warm-up and cosine decay; logs the loss curve; stops on a non-finite loss."""
    if steps <= 0:
        return
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=name, disable=None)
    for step in bar:
        loss = loss_fn()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: training diverged at step {step}")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0 or step == steps - 1:
            log.info(
                "%s step %d/%d loss %.4f (%.1f s)",
                name,
                step + 1,
                steps,
                loss.item(),
                time.perf_counter() - t0,
            )


def train_vae(
    model: RestorerBundle,
    data: PairSampler,
    steps: int,
    batch_size: int,
    crop: int | None,
    lr: float,
) -> None:
    """Autoencoding stage: L1 reconstruction of LQ and HQ faces."""

    def vae_loss() -> torch.Tensor:
        lq, hq = data.batch(batch_size // 2, crop)
        x = torch.cat([lq, hq])
        return (model.decode(model.encode(x), clamp=False) - x).abs().mean()

    _run_stage("vae", steps, list(model.vae.parameters()), lr, vae_loss)


def train_restorer(
    model_name: str,
    arch: dict[str, Any],
    train: dict[str, Any],
    degradation: dict[str, Any],
    seed: int,
    device: str | torch.device = "cpu",
) -> RestorerBundle:
    """The trained restorer, on `device` (initial weights are drawn on the CPU, then moved)."""
    opts = {**DEFAULT_TRAIN, **train}
    torch.manual_seed(seed)
    model: RestorerBundle = MODELS.get(model_name)(arch).to(device)
    data = PairSampler(model.image_size, opts, degradation, seed, device)
    bs, crop, lr = int(opts["batch_size"]), int(opts["crop"]), float(opts["lr"])
    model.train()

    if model.config.get("pretrained_vae"):
        model.load_pretrained_vae()
        log.info("VAE: pretrained weights loaded (stage 1 skipped)")
    else:
        train_vae(model, data, int(opts["vae_steps"]), bs, crop, lr)

    model.vae.requires_grad_(False)

    def latent_loss() -> torch.Tensor:
        lq, hq = data.batch(bs)
        with torch.no_grad():
            target = model.encode(hq)
        return (model.restore_latent(lq) - target).pow(2).mean()

    rest = list(model.unet.parameters()) + list(model.embedder.parameters())
    _run_stage("latent", int(opts["latent_steps"]), rest, lr, latent_loss)

    tune_decoder = bool(opts["tune_decoder"])
    model.vae.decoder.requires_grad_(tune_decoder)

    def pixel_loss() -> torch.Tensor:
        lq, hq = data.batch(bs)
        return (model.restore(lq, clamp=False) - hq).abs().mean()

    tune = rest + (list(model.vae.decoder.parameters()) if tune_decoder else [])
    _run_stage("pixel", int(opts["pixel_steps"]), tune, lr * 0.25, pixel_loss)
    model.requires_grad_(True)
    model.eval()
    return model


def pretrain_vae(
    arch: dict[str, Any],
    steps: int,
    seed: int,
    pool_size: int = 512,
    device: str | torch.device = "cpu",
) -> RestorerBundle:
    """Train only the VAE on full-size faces: the shipped `tiny_vae.safetensors` is made by this."""
    torch.manual_seed(seed)
    model: RestorerBundle = MODELS.get("tiny")({**arch, "pretrained_vae": False}).to(device)
    data_seed = seed + 12_345  # faces disjoint from the restorer's training pool
    opts = {**DEFAULT_TRAIN, "pool_size": pool_size}
    data = PairSampler(model.image_size, opts, {}, data_seed, device)
    model.train()
    train_vae(model, data, steps, DEFAULT_TRAIN["batch_size"], None, DEFAULT_TRAIN["lr"])
    return model.eval()
