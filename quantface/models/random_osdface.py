"""`osdface_random`: OSDFace at its real SD-2.1-base shapes with seeded random weights.

Why: the methods, the workflow and the cost bill have to be exercised at the size the suite
exists for (865,910,724 UNet + 83,653,863 VAE parameters, 4,096 latent tokens at 512 px) on a
machine without the released weights. This model builds exactly what `osdface` builds from the
files (architecture from `models/sd21.py`, the VRE from `models/vre.py`, the same one-step
inference) and fills it locally, deterministically from `init_seed`: nothing is downloaded or
read, and the same seed gives the same weights bit for bit on every machine (every tensor is
drawn on the CPU from one generator, in sorted parameter-name order).

Initialisation (scale-friendly, so a one-step forward at 512 px stays finite and O(1)):
  - weights of Linear / Conv / Embedding (>= 2-D tensors): normal(0, init_gain / sqrt(fan_in)),
    fan_in = in_channels x kernel area (LeCun scaling: each layer roughly keeps its input's
    variance, so the residual streams of the ~100 UNet layers do not blow up);
  - every 1-D tensor: GroupNorm / LayerNorm weights 1, all biases and norm shifts 0.
The outputs are meaningless as faces; quantization error, timings and memory are what it is for.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from quantface.errors import ConfigError
from quantface.models.osdface import DEFAULT_ARCH as OSDFACE_ARCH
from quantface.models.osdface import OSDFaceRestorer
from quantface.models.sd21 import SD21_UNET, SD21_VAE
from quantface.registry import MODELS

DEFAULT_ARCH: dict[str, Any] = {
    **OSDFACE_ARCH,
    "latent_sampling": "mode",  # no trained posterior to sample from: the mean is enough
    "unet": SD21_UNET,
    "vae": SD21_VAE,
    "init_seed": 0,
    "init_gain": 1.0,
}


@MODELS.register("osdface_random")
class RandomOSDFace(OSDFaceRestorer):
    """OSDFace at SD-2.1-base shapes with seeded random weights (no download: scale runs)."""

    name = "osdface_random"
    default_arch = DEFAULT_ARCH

    def __init__(self, config: dict[str, Any] | None = None, modules: dict | None = None) -> None:
        super().__init__({**DEFAULT_ARCH, **(config or {})}, modules)

    @staticmethod
    def check_assets(assets: dict[str, Any]) -> None:
        """Nothing is read, so a `model.assets` entry is a mistake worth one line."""
        if assets:
            raise ConfigError(
                "config key 'model.assets': osdface_random reads no files (its weights are "
                f"seeded random); remove {', '.join(sorted(assets))}"
            )

    @classmethod
    def from_assets(
        cls, assets: dict[str, Any], arch: dict[str, Any] | None = None
    ) -> RandomOSDFace:
        """`prepare-model`: build and fill with seeded random weights (see the module doc)."""
        cls.check_assets(assets)
        bundle = cls(arch)
        random_init(bundle, int(bundle.config["init_seed"]), float(bundle.config["init_gain"]))
        return bundle.eval()


@torch.no_grad()
def random_init(model: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Fill every parameter in place: fan-in-scaled normal weights, unit norms, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.dim() >= 2:
            fan_in = p[0].numel()
            w = torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in))
            p.copy_(w)
        elif name.endswith("bias"):
            p.zero_()
        else:  # norm scales
            p.fill_(1.0)
