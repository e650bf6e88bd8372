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

from quantface.quant.wrap import quant_sites


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
    # eps = unet(z) + noise_skip * z. 0 is OSDFace's (and DDPM's) parameterisation; a subclass
    # trained from scratch may set (1 - sqrt(a_t)) / sqrt(1 - a_t), which makes a zero UNet output
    # return z itself, so the UNet learns the restoration residual instead of a near-identity.
    noise_skip: float = 0.0

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
        if self.noise_skip:
            eps = eps + self.noise_skip * z
        return (z - math.sqrt(1 - self._ab) * eps) / math.sqrt(self._ab)

    def restore(self, lq: Tensor, clamp: bool = True) -> Tensor:
        """[B,3,H,W] in [0,1] -> restored [B,3,H,W] in [0,1], one UNet evaluation."""
        return self.decode(self.restore_latent(lq), clamp)

    def forward(self, lq: Tensor) -> Tensor:
        return self.restore(lq)

    # --- quantization ------------------------------------------------------------------------
    def layer_roles(self) -> dict[str, tuple[str, ...]]:
        """Layers by the role methods make exceptions for (first/last layers, the time
        embedding, the VAE's latent convs), as module names of this bundle.

        Methods ask for roles, never for module names, so a model whose modules are named
        otherwise overrides this one method. This implementation answers for the diffusers
        UNet2DConditionModel + AutoencoderKL pair every bundle here is built from:
        - time_embedding_in / _out: the two Linears of the timestep MLP;
        - unet_in / unet_out: the UNet's first and last convs;
        - vae_encoder_in / _out, vae_decoder_in / _out: the VAE's first and last convs;
        - vae_latent_out / vae_latent_in: the 1x1 convs into and out of the latent
          (`quant_conv`, `post_quant_conv`).
        A role a model lacks maps to no layer.
        """
        names = {id(m): n for n, m in self.named_modules()}
        unet, vae = getattr(self, "unet", None), getattr(self, "vae", None)
        encoder, decoder = getattr(vae, "encoder", None), getattr(vae, "decoder", None)
        time_mlp = getattr(unet, "time_embedding", None)
        parts = {
            "time_embedding_in": getattr(time_mlp, "linear_1", None),
            "time_embedding_out": getattr(time_mlp, "linear_2", None),
            "unet_in": getattr(unet, "conv_in", None),
            "unet_out": getattr(unet, "conv_out", None),
            "vae_encoder_in": getattr(encoder, "conv_in", None),
            "vae_encoder_out": getattr(encoder, "conv_out", None),
            "vae_decoder_in": getattr(decoder, "conv_in", None),
            "vae_decoder_out": getattr(decoder, "conv_out", None),
            "vae_latent_out": getattr(vae, "quant_conv", None),
            "vae_latent_in": getattr(vae, "post_quant_conv", None),
        }
        return {
            role: (names[id(m)],) if isinstance(m, nn.Module) and id(m) in names else ()
            for role, m in parts.items()
        }

    def layers_in_roles(self, roles: tuple[str, ...]) -> list[str]:
        """The module names of the given roles, in the order given."""
        answer = self.layer_roles()
        return [n for role in roles for n in answer[role]]

    def quant_targets(self) -> dict[str, str]:
        """Quantizable sites of the UNet and VAE (name -> kind); the embedder stays FP."""
        return quant_sites(self, self.quant_prefixes)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])
