"""File I/O that never leaves half-written outputs, and image reading that names the bad file.

Every artefact goes to a temp file in the destination directory and is renamed into place, so a
killed job leaves either the old file or nothing, never a truncated one (rename is atomic on the
same filesystem). Folders of outputs are built in a temp folder and renamed the same way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from quantface.errors import CheckpointError, DataError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _remove_stale_temps(path: Path) -> None:
    """Temp siblings left by a killed writer (SIGKILL skips `finally`) are removed on retry."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Temp paths for files that belong together: none is renamed until all were written.

    A job killed while writing leaves none of them (not a plan.json without its model.pt);
    the renames at the end take microseconds, the last path given is renamed last.
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in reversed(paths)][::-1]


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


def load_tensors(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain data only, so no file can run code.

    Tensors land on `map_location` (files are always written from the CPU, so they load anywhere).

    Every failure is one CheckpointError naming the file: absent, empty, unreadable, or holding
    pickled objects the safe loader refuses (torch's own message would advise turning the safety
    off, which is exactly what a user must not do with a file of unknown origin).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {what} {path}: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {what} {path}: it holds pickled objects beyond tensors and plain "
            "data, and unpickling them could run code"
        ) from e
    except Exception as e:  # truncated zip, not a torch file at all
        raise CheckpointError(f"cannot read {what} {path}: {first_line(e)}") from e


def check_plain_weights(path: str | Path) -> None:
    """Refuse a weight file that only a full unpickler can read: unpickling can run code.

    Third-party loaders this package calls (pyiqa, torch.hub) open weight files with
    a full unpickler (`weights_only` off); running the safe loader first means a user-supplied
    file that smuggles code is named and refused before they see it. TorchScript archives (CLIP)
    are loaded by `torch.jit.load`, which runs no pickled Python either.
    """
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return  # .npz (np.load refuses pickles), .mat, .dat: no pickle inside
    try:
        load_tensors(path, "weight file")
    except CheckpointError:
        if not _is_torchscript(path):
            raise


def _is_torchscript(path: Path) -> bool:
    try:
        torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        return False
    return True


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files of a folder; an absent or empty folder is a DataError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder: {folder}")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3; unreadable files are named.

    Grayscale is expanded to three channels and alpha is dropped (faces are restored as opaque
    RGB). 16-bit grayscale is scaled to 8 bits: PIL's own conversion clips it, turning a normal
    16-bit photo into a white square without any error.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):
                gray = (np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255)
                return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
            if im.mode == "F":
                raise DataError(f"{path}: floating-point image; save it as 8- or 16-bit")
            arr = np.array(im.convert("RGB"))
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return arr


def check_square(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Restorers take square aligned face crops: anything else is rejected, never squashed."""
    h, w = arr.shape[:2]
    if h != w:
        raise DataError(
            f"{path} is {w}x{h} px, not square: the model restores square aligned face crops; "
            "crop it to the face (or set align: true for a folder dataset)"
        )
    return arr


def write_image(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1]."""
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """3xHxW float in [0, 1] -> HxWx3 uint8 (rounded, clamped)."""
    return t.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
