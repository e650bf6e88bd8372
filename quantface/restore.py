"""Restore a folder of face images with a saved (FP or quantized) model.

Square inputs of another size are resized to the model's input (area down, bicubic up) and the
output keeps the model's size unless `keep_size` asks for the input's (the restored face is
resized back with antialiased bicubic); every run logs and records in `restore.json` how many
images were resized from what size. Grayscale/RGBA/16-bit inputs are converted to 8-bit RGB and
the EXIF orientation is applied. Non-square inputs are rejected with the file named before any
work: squashing them would distort the face and quietly change what is measured.

The output folder may hold a user's files: they are never deleted or replaced (see
quantface.outputs), the output may not be the input folder or inside it, and inputs whose names
collide after conversion to PNG (face.jpg, face.png) keep their whole name (face.jpg.png,
face.png.png). Each image is written atomically, so an interrupted run keeps what it finished
and a rerun with the same model and options skips those images.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from quantface.data.datasets import MANIFEST, check_dataset
from quantface.device import module_device
from quantface.errors import CheckpointError, DataError, OutputError
from quantface.io import (
    check_output_folder,
    check_square,
    image_size,
    list_images,
    not_square,
    read_image,
    to_tensor,
    to_uint8,
)
from quantface.models.base import RestorerBundle
from quantface.models.checkpoint import load_bundle
from quantface.outputs import OutputFolder
from quantface.timing import log_timing

RECORD = "restore.json"
log = logging.getLogger(__name__)


def fit_to_model(img: torch.Tensor, size: int) -> torch.Tensor:
    """3xHxW in [0,1] -> 3 x size x size."""
    if img.shape[-2:] == (size, size):
        return img
    mode = "area" if min(img.shape[-2:]) > size else "bicubic"
    out = F.interpolate(
        img[None],
        size=(size, size),
        mode=mode,
        **({} if mode == "area" else {"align_corners": False}),
    )
    return out[0].clamp(0, 1)


def load_for_model(path: Path, size: int) -> torch.Tensor:
    """One image file as the model's 3 x size x size input (square only, resized if needed)."""
    return fit_to_model(to_tensor(check_square(read_image(path), path)), size)


def output_names(files: list[Path]) -> dict[Path, str]:
    """Each input's PNG name: `stem.png`, or `name.png` where stems collide (face.jpg, face.PNG)."""
    by_stem: dict[str, int] = defaultdict(int)
    for f in files:
        by_stem[f.stem.casefold()] += 1
    names = {f: (f.stem if by_stem[f.stem.casefold()] == 1 else f.name) + ".png" for f in files}
    seen: dict[str, Path] = {}
    for f, name in names.items():  # e.g. a.jpg.png beside a.jpg and a.png
        if name in seen:
            raise DataError(f"{f} and {seen[name]} would both be written as {name}")
        seen[name] = f
    return names


def check_paths(input_dir: Path, output_dir: Path) -> None:
    """Refuse, before any work, an output that is the input folder or lies inside it."""
    check_output_folder(output_dir)
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise OutputError(
            f"--output {output_dir} is {'the' if out == inp else 'inside the'} --input folder "
            f"{input_dir}: restored images would mix with or replace the originals; give a "
            "folder outside it"
        )


def input_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of every input from its header; non-square ones rejected up front."""
    sizes = [image_size(p) for p in files]
    odd = [(p, s) for p, s in zip(files, sizes) if s[0] != s[1]]
    if odd:
        path, (w, h) = odd[0]
        raise not_square(path if len(odd) == 1 else f"{path} (and {len(odd) - 1} more)", w, h)
    return sizes


def describe_resizing(sizes: list[tuple[int, int]], model_size: int, keep_size: bool) -> str:
    """The one log line (and manifest entry) that says what resizing this run does."""
    counts = Counter(s[0] for s in sizes)
    resized = sum(c for side, c in counts.items() if side != model_size)
    froms = ", ".join(f"{c} of {side}x{side}" for side, c in sorted(counts.items()))
    back = "the inputs' sizes (--keep-size)" if keep_size else f"{model_size}x{model_size} px"
    return (
        f"{len(sizes)} images ({froms} px): {resized} resized to the model's "
        f"{model_size}x{model_size} px; outputs written at {back}"
    )


def resize_back(img: torch.Tensor, side: int) -> torch.Tensor:
    """The restored 3xSxS face at the input's side (antialiased bicubic, as when shrinking)."""
    if img.shape[-1] == side:
        return img
    out = F.interpolate(img[None], size=(side, side), mode="bicubic", antialias=True)
    return out[0].clamp(0, 1)


def run_key(model_path: Path, input_dir: Path, keep_size: bool) -> dict[str, Any]:
    """What decides the outputs: a rerun with the same key may skip images already written."""
    st = model_path.stat()
    return {
        "model": str(model_path.resolve()),
        "model_bytes": st.st_size,
        "model_mtime_ns": st.st_mtime_ns,
        "input": str(input_dir.resolve()),
        "keep_size": keep_size,
    }


@torch.no_grad()
def restore_folder(
    model_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    batch_size: int = 8,
    *,
    keep_size: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    loaded: tuple[RestorerBundle, dict[str, Any], dict[str, Any]] | None = None,
) -> int:
    """Restore every image of `input_dir` into `output_dir` on `device` (images are decoded and
    written on the CPU); returns how many images the folder holds. `loaded` is what
    `load_bundle(model_path)` returned, for a caller that restores several folders."""
    model_path, input_dir, output_dir = Path(model_path), Path(input_dir), Path(output_dir)
    if not model_path.is_file():  # named before the folders: the first thing a user mistypes
        raise CheckpointError(f"model file not found: {model_path}")
    check_paths(input_dir, output_dir)
    if (input_dir.parent / MANIFEST).is_file():  # a prepared dataset: never a silently smaller set
        check_dataset(input_dir.parent)
    files = list_images(input_dir)
    names = output_names(files)
    sizes = input_sizes(files)
    out = OutputFolder(output_dir, names.values(), overwrite=overwrite, records=[RECORD])
    try:
        bundle, _, meta = loaded or load_bundle(model_path, device=device)
        key = run_key(model_path, input_dir, keep_size)
        return _restore_into(out, bundle, meta, key, files, names, sizes, batch_size)
    except BaseException:
        out.abort()
        raise


def _restore_into(
    out: OutputFolder,
    bundle: RestorerBundle,
    meta: dict[str, Any],
    key: dict[str, Any],
    files: list[Path],
    names: dict[Path, str],
    sizes: list[tuple[int, int]],
    batch_size: int,
) -> int:
    keep_size, device = key["keep_size"], module_device(bundle)
    earlier = out.read_json(RECORD) or {}
    done = {f for f in files if earlier.get("run") == key and out.exists(names[f])}
    size = bundle.image_size
    resizing = describe_resizing(sizes, size, keep_size)
    log.info("restore: %s", resizing)
    record = {
        "written_by": "quantface restore",
        "run": key,
        "method": meta.get("method", "?"),
        "bits": meta.get("bits", "fp32"),
        "model_size": size,
        "resizing": resizing,
        "files": {f.name: names[f] for f in files},
        "complete": False,
    }
    out.write_json(RECORD, record)
    if done:
        log.info(
            "restore: %d of %d images were written by an earlier run; kept", len(done), len(files)
        )
    todo = [(f, s) for f, s in zip(files, sizes) if f not in done]
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(todo), batch_size), desc="restore", disable=None):
        chunk = todo[start : start + batch_size]
        lq = torch.stack([load_for_model(p, size) for p, _ in chunk]).to(device)
        for (path, (side, _)), img in zip(chunk, bundle.restore(lq)):
            out.write_image(names[path], to_uint8(resize_back(img, side) if keep_size else img))
    out.write_json(RECORD, {**record, "complete": True})
    log.info(
        "restored %d images with %s (%s) in %.1f s",
        len(todo),
        key["model"],
        meta.get("method", "?"),
        time.perf_counter() - t0,
    )
    log_timing("restore_image", len(todo), time.perf_counter() - t0)
    return len(files)
