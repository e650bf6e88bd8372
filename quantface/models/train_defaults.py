"""The training recipe's defaults, apart from the trainer: the config check and the shipped
restorer's recipe read them in every Snakemake parse and `check-config`, which must not import
torch or diffusers to do so (`models/train.py` imports both)."""

from __future__ import annotations

from typing import Any

DEFAULT_TRAIN: dict[str, Any] = {
    "vae_steps": 800,
    "latent_steps": 4000,
    "pixel_steps": 1000,
    "batch_size": 8,
    "crop": 64,
    "lr": 2.0e-3,
    "tune_decoder": False,  # stage 3 tunes UNet + embedder; OSDFace keeps the VAE decoder frozen
    "pool_size": 1024,
    "face_seed_offset": 1_000_000,  # training faces never overlap test/calibration faces
    # train even when the shipped restorer was made from this very recipe (models/shipped.py)
    "from_scratch": False,
}
