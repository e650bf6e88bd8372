"""SD-2.1-base UNet and VAE architectures from their config values, for accounting without weights.

The values are those of `stabilityai/stable-diffusion-2-1-base` `unet/config.json` and
`vae/config.json` (diffusers layout), the architecture OSDFace fine-tunes; what is not listed
takes diffusers' default, which is what those files leave to it. Built this way the UNet has
865,910,724 parameters and the VAE 83,653,863 (the released checkpoints' counts), which the tests check.

`sd21_osdface(device="meta")` builds the whole OSDFace bundle (UNet + VAE + the VRE from
`vre.py`) on the meta device: no memory, no weights, a few seconds; a meta-device forward at
512 px propagates shapes only, which is all that counting parameters and MACs needs.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from quantface.models.osdface import OSDFaceRestorer

SD21_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "use_linear_projection": True,
}

SD21_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def sd21_osdface(device: str | torch.device = "meta") -> OSDFaceRestorer:
    """OSDFace on SD-2.1-base shapes with uninitialised weights (meta: shapes only)."""
    with torch.device(device):  # the big parts are never materialised on the CPU
        unet = UNet2DConditionModel.from_config(SD21_UNET)
        vae = AutoencoderKL.from_config(SD21_VAE)
    cfg = {"unet": SD21_UNET, "vae": SD21_VAE, "latent_sampling": "mode"}
    bundle = OSDFaceRestorer(cfg, modules={"unet": unet, "vae": vae})  # the VRE: 30 M on CPU
    return bundle.to(device).eval()
