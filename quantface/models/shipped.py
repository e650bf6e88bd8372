"""The shipped trained `tiny` restorer: the embedded default's FP model, trained once, verified on use.

Why: training the tiny restorer costs ~40 CPU minutes, and its recipe is seeded, so every fresh
clone spent them to get the same weights. `prepare-model` now uses the shipped file when the run
asks for exactly the recipe that made it: the model, its full architecture, the full training
schedule, the training degradation and the seed. Any change to one of them, or
`model.train.from_scratch: true`, trains as before.

The file (`assets/tiny_restorer.safetensors`) holds the trained UNet and visual prompt embedder
in float32, so a run that uses it gets the very tensors the recipe produced on the machine that
made it. The VAE is not in it: training keeps the shipped pretrained VAE (`tiny_vae.safetensors`)
frozen, and the file records that VAE's SHA-256, so a VAE that changed since is caught. The
metadata also holds the recipe, the SHA-256 of the stored tensors (checked before use: a damaged
file is refused, not restored from), the torch version and the thread count that trained it
(CPU training is deterministic for a fixed torch and thread count, not across them:
`benchmarks/tiny_restorer.py` retrains and says whether this torch reproduces the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from quantface.errors import CheckpointError
from quantface.io import atomic_path, file_sha256
from quantface.models.base import RestorerBundle

log = logging.getLogger(__name__)

SHIPPED_RESTORER = Path(__file__).parent / "assets" / "tiny_restorer.safetensors"


def training_recipe(
    model_name: str,
    arch: dict[str, Any],
    train: dict[str, Any],
    degradation: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Everything the trained weights depend on, with defaults filled in, so that spelling a
    default out in a config does not count as a change. `from_scratch` is not part of it: it
    says whether to use a matching shipped file, not what to train."""
    from quantface.data.degradation import DegradationConfig
    from quantface.models.train_defaults import DEFAULT_TRAIN
    from quantface.registry import MODELS

    default_arch = getattr(MODELS.get(model_name), "default_arch", {})
    schedule = {**DEFAULT_TRAIN, **train}
    schedule.pop("from_scratch", None)
    recipe = {
        "model": model_name,
        "arch": {**default_arch, **arch},
        "train": schedule,
        "degradation": DegradationConfig.from_dict(degradation).__dict__,
        "seed": int(seed),
    }
    return json.loads(json.dumps(recipe))  # tuples -> lists: compares equal to a parsed file


def tensors_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order: the identity of the weights,
    independent of how a file lays them out."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def trained_parts(recipe: dict[str, Any]) -> tuple[str, ...]:
    """What training changes: the UNet and the embedder, and the VAE unless it is the frozen
    pretrained one (trained from scratch, or its decoder tuned in the pixel stage)."""
    frozen_vae = recipe["arch"].get("pretrained_vae") and not recipe["train"].get("tune_decoder")
    return ("unet", "embedder") if frozen_vae else ("unet", "embedder", "vae")


def trained_state(model: RestorerBundle, parts: tuple[str, ...]) -> dict[str, Tensor]:
    return {
        f"{part}.{k}": v.detach().cpu().contiguous()
        for part in parts
        for k, v in getattr(model, part).state_dict().items()
    }


def save_shipped(
    model: RestorerBundle, recipe: dict[str, Any], path: Path, threads: int, vae_file: Path
) -> str:
    """Write the trained parts of `model` with their provenance; returns the tensors' SHA-256."""
    from safetensors.torch import save_file

    parts = trained_parts(recipe)
    state = trained_state(model, parts)
    sha = tensors_sha256(state)
    meta = {
        "recipe": json.dumps(recipe, sort_keys=True),
        "tensors_sha256": sha,
        "torch": torch.__version__,
        "threads": str(threads),
        "made_by": "python benchmarks/tiny_restorer.py --write",
    }
    if "vae" not in parts:
        meta["vae_sha256"] = file_sha256(vae_file)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha


def shipped_metadata(path: Path = SHIPPED_RESTORER) -> dict[str, str] | None:
    """The shipped file's metadata (reads only the header), or None when there is no file."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def matching_shipped(recipe: dict[str, Any], path: Path = SHIPPED_RESTORER) -> Path | None:
    """`path` when it was trained from exactly `recipe`, else None."""
    meta = shipped_metadata(path)
    if not meta or "recipe" not in meta:
        return None
    return path if json.loads(meta["recipe"]) == recipe else None


def load_shipped(model: RestorerBundle, path: Path, vae_file: Path) -> None:
    """Load the trained parts into `model` (whose VAE is already the pretrained one), after
    checking the stored tensors and the VAE against the SHA-256s the file records."""
    from safetensors.torch import load_file

    meta = shipped_metadata(path) or {}
    state = load_file(str(path))
    if tensors_sha256(state) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{path}: its weights do not match the SHA-256 recorded in it (damaged file); "
            "reinstall the package or set model.train.from_scratch: true to train the restorer"
        )
    if "vae_sha256" in meta and file_sha256(vae_file) != meta["vae_sha256"]:
        raise CheckpointError(
            f"{path} was trained on another {vae_file.name} than the one installed; "
            "set model.train.from_scratch: true to train the restorer on this VAE"
        )
    for part in {k.split(".", 1)[0] for k in state}:
        prefix = f"{part}."
        getattr(model, part).load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
    log.info(
        "restorer: the shipped trained weights %s (recipe matches; trained with torch %s, "
        "%s threads; model.train.from_scratch: true retrains)",
        path.name,
        meta.get("torch"),
        meta.get("threads"),
    )


def fp_restorer(
    model_name: str,
    arch: dict[str, Any],
    train: dict[str, Any],
    degradation: dict[str, Any],
    seed: int,
    device: str | torch.device = "cpu",
) -> RestorerBundle:
    """The trained restorer of this recipe: the shipped weights when they were made from it
    (and `from_scratch` is not set), else trained now by `train_restorer`."""
    from quantface.models.tiny import PRETRAINED_VAE
    from quantface.models.train import train_restorer
    from quantface.registry import MODELS

    recipe = training_recipe(model_name, arch, train, degradation, seed)
    shipped = None if train.get("from_scratch") else matching_shipped(recipe, SHIPPED_RESTORER)
    if shipped is None:
        return train_restorer(model_name, arch, train, degradation, seed, device=device)
    model: RestorerBundle = MODELS.get(model_name)(arch)
    if model.config.get("pretrained_vae"):
        model.load_pretrained_vae()
    load_shipped(model, shipped, PRETRAINED_VAE)
    return model.to(device).eval()
