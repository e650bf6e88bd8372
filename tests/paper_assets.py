"""Tiny stand-ins for the paper study's assets, written in the real files' layouts.

Nothing here is a real model or a real test set: the SD-2.1 UNet/VAE, OSDFace's LoRA and VRE are
built from *tiny* configs with seeded random weights, and the "test sets" are a few faces from
the package's own generator. What is real is the file layout the adapter and the dataset code
read (diffusers folders, `pytorch_lora_weights.safetensors` with PEFT and diffusers key styles,
`associate_2.ckpt` with `state_dict` / `vqvae_LQ.*` plus the keys OSDFace's loader ignores,
`embedding_change_weights.pth`, LQ/HQ folders of PNG/JPEG files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from quantface.data.degradation import DegradationConfig, degrade
from quantface.data.synthetic_faces import generate_face
from quantface.models.vre import OSDFaceVRE

IMAGE_SIZE = 64
CONTEXT = 32
LORA_RANK, LORA_ALPHA = 4, 8.0

TINY_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": CONTEXT,
    "attention_head_dim": [2, 4],
    "use_linear_projection": True,  # SD-2.x flags
    "upcast_attention": True,
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": IMAGE_SIZE,
}
TINY_VRE: dict[str, Any] = {
    "resolution": 64,
    "ch": 8,
    "ch_mult": [1, 2, 2],  # 64 -> 16x16 = 256 latent positions, like the real 512 -> 16
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "z_channels": 16,
    "n_embed": 128,
    "embed_dim": 16,
    "n_tokens": 77,
    "norm_groups": 4,
    "head_size": 1,
    "context_dim": CONTEXT,
}
# Linear and Conv2d targets, PEFT (`unet.` prefix) and diffusers (`lora.down/up`) key styles.
LORA_TARGETS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "peft",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "peft",
    "down_blocks.0.attentions.0.proj_in": "peft",
    "mid_block.resnets.0.conv1": "peft",
    "up_blocks.1.resnets.0.conv2": "peft",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2": "diffusers",
}
TINY_ARCH = {
    "image_size": IMAGE_SIZE,
    "lora_rank": LORA_RANK,
    "lora_alpha": LORA_ALPHA,
    "vre": TINY_VRE,
}


def lora_pairs(
    unet: torch.nn.Module, seed: int = 5
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A, B) per target: A (r, in[, k, k]), B (out, r[, 1, 1]) as OSDFace saves them."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in LORA_TARGETS:
        w = unet.get_submodule(name).weight
        if w.ndim == 4:
            a = torch.randn(LORA_RANK, w.shape[1], *w.shape[2:], generator=g) * 0.1
            b = torch.randn(w.shape[0], LORA_RANK, 1, 1, generator=g) * 0.1
        else:
            a = torch.randn(LORA_RANK, w.shape[1], generator=g) * 0.1
            b = torch.randn(w.shape[0], LORA_RANK, generator=g) * 0.1
        out[name] = (a, b)
    return out


def write_osdface_assets(root: Path, seed: int = 0) -> dict[str, Path]:
    """SD-2.1-base-shaped diffusers folders + OSDFace's three release files under `root`."""
    torch.manual_seed(seed)
    sd = root / "stable-diffusion-2-1-base"
    unet = UNet2DConditionModel(**TINY_UNET)
    unet.save_pretrained(sd / "unet")
    AutoencoderKL(**TINY_VAE).save_pretrained(sd / "vae")
    pre = root / "OSDFace" / "pretrained"
    pre.mkdir(parents=True)
    tensors = {}
    for name, (a, b) in lora_pairs(unet, seed + 5).items():
        if LORA_TARGETS[name] == "peft":
            tensors[f"unet.{name}.lora_A.weight"] = a
            tensors[f"unet.{name}.lora_B.weight"] = b
        else:
            tensors[f"{name}.lora.down.weight"] = a
            tensors[f"{name}.lora.up.weight"] = b
    save_file(tensors, str(pre / "pytorch_lora_weights.safetensors"))
    vre = OSDFaceVRE(TINY_VRE)
    state = {f"vqvae_LQ.{k}": v for k, v in vre.vqvae.state_dict().items()}
    state["vqvae_LQ.decoder.conv_in.weight"] = torch.zeros(2, 2, 3, 3)  # ignored, like OSDFace
    state["vqvae_HQ.encoder.conv_in.weight"] = torch.zeros(2, 2, 3, 3)
    torch.save({"state_dict": state, "epoch": 2}, pre / "associate_2.ckpt")
    torch.save(vre.embedding_change.state_dict(), pre / "embedding_change_weights.pth")
    return {"sd21_base": sd, "osdface": pre}


def write_face_folders(
    root: Path, n: int, paired: bool, seed: int, size: int = IMAGE_SIZE, jpeg: bool = False
) -> dict[str, Path]:
    """`root/lq` (and `root/hq`) of n generated faces; LQ degraded with the package pipeline."""
    deg = DegradationConfig(reference_size=512)
    out = {"lq": root / "lq"}
    out["lq"].mkdir(parents=True)
    if paired:
        out["hq"] = root / "hq"
        out["hq"].mkdir()
    for i in range(n):
        hq = generate_face(seed * 1000 + i, size)
        lq = degrade(hq, np.random.default_rng([seed, i]), deg)
        ext = "jpg" if jpeg else "png"
        Image.fromarray(lq).save(out["lq"] / f"{i:04d}.{ext}")
        if paired:
            Image.fromarray(hq).save(out["hq"] / f"{i:04d}.png")
    return out
