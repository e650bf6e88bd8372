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

from quantface import __version__
from quantface.errors import CheckpointError, first_line
from quantface.io import atomic_torch_save, load_tensors
from quantface.models.base import RestorerBundle
from quantface.quant.specs import LayerQuant
from quantface.quant.wrap import wrap_model
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
        "package_version": __version__,
        "model": bundle.name,
        "config": bundle.config,
        "layout": {k: v.to_dict() for k, v in (layout or {}).items()},
        "meta": meta or {},
        "state_dict": {k: v.detach().cpu() for k, v in bundle.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The file's payload, its tensors memory-mapped (see `load_bundle`)."""
    path = Path(path)
    payload = load_tensors(path, "model file", mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a QuantFace Bench model file (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        writer = payload.get("package_version", "an unknown version")
        raise CheckpointError(
            f"{path} was written by quantface {writer} (file format version "
            f"{payload.get('version')}); quantface {__version__} reads format version {VERSION}: "
            "re-create it with this version "
            "(`snakemake` does so) or load it with the version that wrote it"
        )
    return payload


def _state_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """'' when `found` fits `expected` key for key and shape for shape, else what differs."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [  # empty buffers (uncalibrated quantizer scales) adopt the saved shape on load
        f"{k} is {list(found[k].shape)}, expected {list(v.shape)}"
        for k, v in expected.items()
        if k in found and v.numel() and tuple(found[k].shape) != tuple(v.shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} expected tensors are absent (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} tensors are not in this architecture (e.g. {extra[0]})")
    return "; ".join(parts)


def _bad_values(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """'' when every floating tensor is floating and finite, else the first offender.

    `load_state_dict` casts integer or bool tensors into float parameters without a word and
    NaN/Inf load as they are; either restores black or flat grey images with exit 0.
    """
    for k, v in expected.items():
        t = found[k]
        if not isinstance(t, torch.Tensor):
            return f"{k} is a {type(t).__name__}, not a tensor"
        if v.is_floating_point() and not t.is_floating_point():
            return (
                f"{k} holds {str(t.dtype).removeprefix('torch.')} values, expected floating point"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f"{k} holds NaN or Inf values"
    return ""


def load_bundle(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[RestorerBundle, dict[str, LayerQuant], dict[str, Any]]:
    """Rebuild the bundle exactly as saved, on `device`; returns (bundle, layout, meta).

    Built and filled on the CPU, then moved as a whole: quantizer buffers take their saved shapes
    while loading, so moving afterwards is what puts every last tensor on the device.

    The saved tensors are memory-mapped and *assigned* to the module (not copied into the freshly
    initialised ones, which are then freed): at SD-2.1 size a copy would hold the 4 GB model twice
    per job. The mapping is private (copy-on-write), so a method that edits weights in place
    never writes to the file; the values are the file's either way.
    """
    payload = read_checkpoint(path)
    bundle: RestorerBundle = MODELS.get(payload["model"])(payload["config"])
    layout = {k: LayerQuant.from_dict(v) for k, v in payload["layout"].items()}
    try:
        wrap_model(bundle, layout)
    except (RuntimeError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: its quantization layout does not fit the '{payload['model']}' "
            f"architecture it names: {first_line(e)}"
        ) from e
    differ = _state_mismatch(bundle.state_dict(), payload["state_dict"])
    if differ:
        raise CheckpointError(
            f"{path} does not match the '{payload['model']}' architecture it names: {differ}"
        )
    bad = _bad_values(bundle.state_dict(), payload["state_dict"])
    if bad:
        raise CheckpointError(f"{path}: {bad}; the model would restore blank images")
    bundle.load_state_dict(payload["state_dict"], strict=True, assign=True)
    bundle.to(device).eval()
    return bundle, layout, payload["meta"]
