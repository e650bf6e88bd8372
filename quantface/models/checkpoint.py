"""Save and load a (possibly quantized) RestorerBundle as one self-describing file.

The file is a plain dict of tensors and JSON-able values, loaded with `weights_only=True`, so a
user-supplied file can never execute code. It holds the model name and architecture config (to
rebuild the float model), the quantization layout (to re-wrap the same sites with the same
quantizer specs), the bit plan and the method that produced it, then the state dict (weights and
frozen quantizer parameters). Loading rebuilds, re-wraps and loads strictly: what was saved is
what runs, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantface.errors import CheckpointError
from quantface.io import atomic_torch_save
from quantface.models.base import RestorerBundle
from quantface.quant.layers import LayerQuant, wrap_model
from quantface.registry import MODELS

FORMAT = "quantface-bundle"
VERSION = 1


def save_bundle(
    bundle: RestorerBundle,
    path: str | Path,
    *,
    layout: dict[str, LayerQuant] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": bundle.name,
        "config": bundle.config,
        "layout": {k: v.to_dict() for k, v in (layout or {}).items()},
        "meta": meta or {},
        "state_dict": {k: v.detach().cpu() for k, v in bundle.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file at all
        raise CheckpointError(f"cannot read model file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a QuantFace Bench model file (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} was written by format version {payload.get('version')}; this package reads "
            f"version {VERSION}: re-create it with this version (`snakemake` does so)"
        )
    return payload


def load_bundle(path: str | Path) -> tuple[RestorerBundle, dict[str, LayerQuant], dict[str, Any]]:
    """Rebuild the bundle exactly as saved; returns (bundle, layout, meta)."""
    payload = read_checkpoint(path)
    bundle: RestorerBundle = MODELS.get(payload["model"])(payload["config"])
    layout = {k: LayerQuant.from_dict(v) for k, v in payload["layout"].items()}
    try:
        wrap_model(bundle, layout)
        bundle.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"{path} does not match the '{payload['model']}' architecture it names: {e}"
        ) from e
    bundle.eval()
    return bundle, layout, payload["meta"]
