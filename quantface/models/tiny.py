"""`tiny`: the embedded default restorer, OSDFace in miniature, built from real diffusers blocks.

- VAE: a small `AutoencoderKL` (down factor 2, 4 latent channels: 64x64x4 for a 128-px face).
  Like OSDFace, which starts from the pretrained SD-2.1 VAE and keeps it frozen, the restorer
  starts from a pretrained tiny VAE shipped in `assets/tiny_vae.safetensors` (made by
  `quantface pretrain-vae`, seeded; 23 minutes on 2 cores, so it is not redone in every run). Its shape
  is chosen to learn fast on a CPU: no residual blocks between the down-sampling convolutions,
  one-group GroupNorm (per-channel groups erase the colour statistics the decoder needs) and no
  mid-block attention. Down factor 2, not SD's 8: at this size the decoder is the restorer's
  ceiling (a 4x, 8-channel latent reconstructed the test faces at 26.1 dB, this one at 27.4);
- UNet: a small `UNet2DConditionModel`, evaluated once at t=399. Its two full-resolution levels
  have no attention and few channels and its two coarse levels cross-attend to the visual prompt,
  which keeps the 64x64 latent at ~1.25x the cost of the former 3-level UNet on a 32x32 latent.
  Its noise prediction has a skip (`eps_skip`, the one departure from OSDFace's one-step path):
  eps = UNet(z) + (1 - sqrt(a_t)) / sqrt(1 - a_t) * z, so a zero UNet output returns the LQ
  latent and the UNet learns the restoration residual. OSDFace starts from SD-2.1, whose UNet
  already predicts noise well; a UNet trained from scratch in the plain form first has to learn
  eps ~ 0.46 z (at step 0 it restored the default faces at 19.3 dB, 4 dB under their input).
  The skip is one scaled add outside the UNet, in full precision: every quantized layer is
  still inside the UNet and the VAE, and a method sees the same `denoise` call;
- visual prompt embedder: a strided conv encoder of the LQ image whose feature map becomes
  context tokens, projected by OSDFace's two-layer 1x1 Conv1d head (no VQ dictionary: with a
  model this small a codebook adds nothing measurable, so it is left out on purpose).

The UNet and embedder are trained by `quantface train` (`models/train.py`) on synthetic pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from quantface.errors import ConfigError, WeightsMissingError
from quantface.models.base import RestorerBundle
from quantface.registry import MODELS

PRETRAINED_VAE = Path(__file__).parent / "assets" / "tiny_vae.safetensors"
VAE_KEYS = (
    "image_size",
    "vae_channels",
    "vae_layers_per_block",
    "vae_norm_groups",
    "vae_attention",
    "latent_channels",
)

DEFAULT_ARCH: dict[str, Any] = {
    "image_size": 128,
    "vae_channels": [32, 32],
    "vae_layers_per_block": 0,
    "vae_norm_groups": 1,
    "latent_channels": 4,
    "vae_attention": False,
    "unet_norm_groups": 8,
    "unet_channels": [16, 32, 64, 64],
    "unet_attention": [False, False, True, True],  # per level; None = all but the first level
    "context_dim": 64,
    "attention_head_dim": 8,
    "embed_tokens_side": 8,
    "pretrained_vae": True,  # start from the shipped pretrained VAE (like OSDFace's SD VAE)
    "timestep": 399,
    "latent_scale": 0.18215,
    # the UNet predicts the noise *residual* over `noise_skip` (RestorerBundle): with its zero-
    # initialised head the restorer starts as decode(encode(lq)); False is OSDFace's plain eps
    "eps_skip": True,
}


class VisualPromptEmbedder(nn.Module):
    """LQ image -> (B, tokens, context_dim) visual prompt, like OSDFace's VRE + 1x1 projection."""

    def __init__(self, context_dim: int, tokens_side: int) -> None:
        super().__init__()
        c = context_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(tokens_side),
        )
        self.project = nn.Sequential(
            nn.Conv1d(c, c, 1),
            nn.SiLU(),
            nn.Conv1d(c, c, 1),
            nn.SiLU(),
        )

    def forward(self, lq: Tensor) -> Tensor:
        f = self.encoder(lq * 2 - 1).flatten(2)  # (B, C, tokens)
        return self.project(f).transpose(1, 2)


@MODELS.register("tiny")
class TinyRestorer(RestorerBundle):
    """Embedded one-step latent-diffusion face restorer (diffusers AutoencoderKL + UNet2DConditionModel), trained on CPU in minutes."""

    name = "tiny"
    default_arch = DEFAULT_ARCH  # the keys model.arch may override (checked with the config)
    converted = False  # built here, not converted from local weights: no asset files to check

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        cfg = {**DEFAULT_ARCH, **(config or {})}
        super().__init__(cfg)
        vc, uc = cfg["vae_channels"], cfg["unet_channels"]
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vc),
            up_block_types=("UpDecoderBlock2D",) * len(vc),
            block_out_channels=tuple(vc),
            layers_per_block=cfg["vae_layers_per_block"],
            latent_channels=cfg["latent_channels"],
            norm_num_groups=cfg["vae_norm_groups"],
            sample_size=cfg["image_size"],
            mid_block_add_attention=cfg["vae_attention"],
        )
        attn = cfg["unet_attention"] or [False] + [True] * (len(uc) - 1)
        if len(attn) != len(uc):
            raise ConfigError(
                f"model.arch.unet_attention has {len(attn)} entries for {len(uc)} UNet levels "
                f"(unet_channels {list(uc)}); give one true/false per level"
            )
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
        self.unet = UNet2DConditionModel(
            sample_size=cfg["image_size"] // 2 ** (len(vc) - 1),
            in_channels=cfg["latent_channels"],
            out_channels=cfg["latent_channels"],
            block_out_channels=tuple(uc),
            layers_per_block=1,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=cfg["context_dim"],
            attention_head_dim=cfg["attention_head_dim"],
            norm_num_groups=cfg["unet_norm_groups"],
        )
        # Zero-initialised noise head. With eps_skip, step 0 is then exactly decode(encode(lq)),
        # and the UNet learns only what restoration changes. Without it a zero eps gives
        # z / sqrt(a_t) = 1.53 z at t=399 (19.3 dB on the default faces, 4 dB under the input),
        # and the UNet must spend its capacity learning eps ~ 0.46 z first.
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        if cfg["eps_skip"]:
            self.noise_skip = (1 - math.sqrt(self._ab)) / math.sqrt(1 - self._ab)
        self.embedder = VisualPromptEmbedder(cfg["context_dim"], cfg["embed_tokens_side"])

    def vae_arch(self) -> dict[str, Any]:
        return {k: self.config[k] for k in VAE_KEYS}

    def load_pretrained_vae(self, path: Path = PRETRAINED_VAE) -> None:
        """Load the shipped VAE (made by `quantface pretrain-vae`) if the architecture matches."""
        from safetensors.torch import load_file

        self.check_pretrained_vae(path)
        self.vae.load_state_dict(load_file(str(path)))

    def check_pretrained_vae(self, path: Path = PRETRAINED_VAE) -> None:
        """The shipped VAE exists and fits this architecture (reads only its metadata)."""
        from safetensors import safe_open

        if not path.is_file():
            raise WeightsMissingError(
                f"pretrained tiny VAE not found: {path}; recreate it with "
                f"`quantface pretrain-vae --out {path}`"
            )
        with safe_open(str(path), "pt") as f:
            saved = json.loads(f.metadata()["arch"])
        if saved != json.loads(json.dumps(self.vae_arch())):
            raise ConfigError(
                f"model.arch does not match the pretrained VAE {path.name} "
                f"({saved}); set model.arch.pretrained_vae: false to train one"
            )
