"""RestorerBundle: a one-step latent-diffusion face restorer (VAE + UNet + visual prompt embedder).

The one-step path is OSDFace's: encode the LQ image to a latent z, predict the noise at a fixed
timestep t conditioned on the embedder's visual prompt, take the DDPM x0 estimate
`x0 = (z - sqrt(1 - a_t) * eps) / sqrt(a_t)` as the restored latent, and decode it. Only the UNet
and the VAE are quantization targets; the embedder stays full precision, as in the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from quantface.quant.layers import quant_sites


def alpha_bar(t: int, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000):
    """SD-2.1's cumulative alpha at timestep t (scaled-linear schedule), from diffusers itself."""
    sched = DDPMScheduler(
        num_train_timesteps=steps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="scaled_linear",
    )
    return float(sched.alphas_cumprod[t])


class RestorerBundle(nn.Module):
    """Base class: subclasses build `unet`, `vae`, `embedder` and say how to encode/condition."""

    name: str = "base"
    quant_prefixes: tuple[str, ...] = ("unet", "vae")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.timestep = int(config.get("timestep", 399))
        self.latent_scale = float(config.get("latent_scale", 0.18215))
        self._ab = alpha_bar(self.timestep)

    # --- the one-step restoration path -------------------------------------------------------
    def encode(self, lq: Tensor) -> Tensor:
        return self.vae.encode(lq * 2 - 1).latent_dist.mode() * self.latent_scale

    def decode(self, z: Tensor, clamp: bool = True) -> Tensor:
        """Latent -> image in [0,1]; training passes clamp=False so saturated pixels keep a gradient."""
        x = self.vae.decode(z / self.latent_scale).sample
        return ((x.clamp(-1, 1) if clamp else x) + 1) / 2

    def condition(self, lq: Tensor) -> Tensor:
        return self.embedder(lq)

    def restore_latent(self, lq: Tensor) -> Tensor:
        """The restored latent: one UNet evaluation at t and the DDPM x0 estimate."""
        return self.denoise(self.encode(lq), self.condition(lq))

    def denoise(self, z: Tensor, context: Tensor) -> Tensor:
        """One UNet evaluation at t on the LQ latent, then the DDPM x0 estimate."""
        t = torch.full((z.shape[0],), self.timestep, dtype=torch.long, device=z.device)
        eps = self.unet(z, t, encoder_hidden_states=context).sample
        return (z - math.sqrt(1 - self._ab) * eps) / math.sqrt(self._ab)

    def restore(self, lq: Tensor, clamp: bool = True) -> Tensor:
        """[B,3,H,W] in [0,1] -> restored [B,3,H,W] in [0,1], one UNet evaluation."""
        return self.decode(self.restore_latent(lq), clamp)

    def forward(self, lq: Tensor) -> Tensor:
        return self.restore(lq)

    # --- quantization ------------------------------------------------------------------------
    def quant_targets(self) -> dict[str, str]:
        """Quantizable sites of the UNet and VAE (name -> kind); the embedder stays FP."""
        return quant_sites(self, self.quant_prefixes)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])
