"""File I/O that never leaves half-written outputs, and image reading that names the bad file.

Every artefact goes to a temp file in the destination directory and is renamed into place, so a
killed job leaves either the old file or nothing, never a truncated one (rename is atomic on the
same filesystem). Folders of outputs are built in a temp folder and renamed the same way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from quantface.errors import (
    CheckpointError,
    DataError,
    DiskFullError,
    OutputError,
    first_line,
)

if TYPE_CHECKING:  # torch is imported where a tensor is made or saved: report jobs never need it
    import torch

IMAGE_READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


OWNED = ".quantface-files"  # in every folder the suite writes: the names it wrote there
DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "failed writing")


def _remove_stale_temps(path: Path) -> None:
    """Temp siblings left by a killed writer (SIGKILL skips `finally`) are removed on retry."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """Give a temp file or folder the mode a plain `open`/`mkdir` would have under the umask.

    mkstemp/mkdtemp create 0600/0700 whatever the umask, so without this every artefact on a
    shared cluster would be unreadable to the user's colleagues.
    """
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p that returns the folders it created (deepest last), so a failure can undo them."""
    created = []
    for parent in [*reversed(folder.parents), folder]:
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:  # a concurrent job made it
                continue
            except NotADirectoryError as e:
                raise OutputError(f"cannot create folder {parent}: {e.strerror}") from None
            created.append(parent)
    return created


def remove_if_empty(folders: list[Path]) -> None:
    """Undo `make_parents` after a failure: no empty folder is left behind."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def disk_full_error(e: BaseException, path: Path) -> DiskFullError | None:
    """The one-line error for a write that failed for lack of space, or None for other failures.

    torch.save does not raise OSError on a full disk: its zip writer fails with "unexpected pos"
    or "file write failed", which never mentions space, so those are translated here too.
    """
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        why = "no space left on device"
    elif isinstance(e, RuntimeError) and any(m in str(e) for m in TORCH_WRITE_FAILURES):
        why = "the write failed part-way (the disk is probably full)"
    else:
        return None
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
        room = f"; {free / 2**20:.1f} MiB free there now"
    except OSError:
        room = ""
    return DiskFullError(f"cannot write {path}: {why}{room}; finished outputs were kept")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, on error delete it.

    Folders created for it are removed again if the write fails, and a full disk is reported
    as such (DiskFullError) instead of as the writer's own error.
    """
    path = Path(path)
    if path.is_symlink() or path.is_dir():
        kind = "a symlink" if path.is_symlink() else "a folder"
        raise OutputError(f"cannot write {path}: it is {kind}; give the path of a file")
    created = make_parents(path.parent)
    _remove_stale_temps(path)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        publish_mode(tmp_path)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        remove_if_empty(created)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise


def owned_names(folder: Path) -> set[str] | None:
    """Names the suite recorded writing in `folder`; None when it holds no record."""
    record = folder / OWNED
    if not record.is_file():
        return None
    try:
        names = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return set(names) if isinstance(names, list) else None


def write_owned(folder: Path, names: set[str]) -> None:
    """Record (atomically) the names the suite wrote in `folder`."""
    with atomic_path(folder / OWNED) as tmp:
        tmp.write_text(json.dumps(sorted(names - {OWNED}), indent=0))


def record_written(path: Path) -> None:
    """Add a file the suite just wrote to its folder's record, so a later run may replace it
    (a file the record does not name is a user's: `check_replaceable` refuses it)."""
    names = owned_names(path.parent) or set()
    if path.name not in names:
        write_owned(path.parent, names | {path.name})


def check_replaceable(path: Path, flag: str) -> None:
    """A single-file output may replace only a file the suite wrote (its folder's record names
    it): a user's `holiday.png` given as `--out` is refused before any work, not overwritten."""
    ours = owned_names(path.parent) or set()
    if path.is_file() and not path.is_symlink() and path.name not in ours:
        raise OutputError(
            f"{flag} {path} already exists and quantface did not write it; give a new path "
            "(or remove the file yourself)"
        )


def foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing folder the suite did not write (sorted); [] for an absent one."""
    if not folder.is_dir():
        return []
    owned = owned_names(folder) or set()
    return sorted(p.name for p in folder.iterdir() if p.name not in owned | {OWNED})


def check_output_folder(path: Path) -> None:
    """A folder output must be a real folder or not exist yet: never a file, never a symlink."""
    if path.is_symlink():
        raise OutputError(f"output folder {path} is a symlink; give the folder it points to")
    if path.exists() and not path.is_dir():
        raise OutputError(f"output folder {path} is a file, not a folder")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` as a whole.

    Only a folder the suite wrote itself is replaced: if `path` holds anything the suite did not
    write (per its `.quantface-files` record), nothing is done and OutputError names it, so a
    user's folder given as an output is never deleted.
    """
    path = Path(path)
    check_output_folder(path)
    foreign = foreign_entries(path)
    if foreign:
        raise OutputError(
            f"output folder {path} holds {len(foreign)} entries quantface did not write "
            f"(e.g. {foreign[0]}); give a new or empty folder"
        )
    created = make_parents(path.parent)
    _remove_stale_temps(path)
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        publish_mode(tmp)
        yield tmp
        write_owned(tmp, {p.name for p in tmp.iterdir()})
        if path.exists():
            shutil.rmtree(path)  # every entry in it was written by the suite (checked above)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)
        remove_if_empty(created)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise


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
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed: what ties a calibration file to its model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


def load_tensors(
    path: str | Path, what: str, map_location: str | torch.device = "cpu", mmap: bool = False
) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain data only, so no file can run code.

    Tensors land on `map_location` (files are always written from the CPU, so they load anywhere).
    `mmap=True` maps the file copy-on-write instead of reading it into memory: a 4 GB model file
    then costs page cache (shared by every job reading the same file, and reclaimable) rather
    than a second private copy beside the model it is loaded into.

    Every failure is one CheckpointError naming the file: absent, empty, unreadable, or holding
    pickled objects the safe loader refuses (torch's own message would advise turning the safety
    off, which is exactly what a user must not do with a file of unknown origin).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {what} {path}: the file is empty")
    try:
        # only zip archives can be mapped; a legacy or plain pickle is read (and refused) whole
        mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    import torch

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
    16-bit photo into a white square without any error. The EXIF orientation is applied, so a
    rotated phone photo is read upright.
    """
    path = Path(path)
    try:
        with Image.open(path) as raw:
            im = ImageOps.exif_transpose(raw)  # phone photos: upright as every viewer shows them
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):
                gray = (np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255)
                return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
            if im.mode == "F":
                raise DataError(f"{path}: floating-point image; save it as 8- or 16-bit")
            arr = np.array(im.convert("RGB"))
    except IMAGE_READ_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return arr


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as `read_image` returns it (EXIF orientation applied), from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            swapped = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # 90/270-degree orientations
    except IMAGE_READ_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return (h, w) if swapped else (w, h)


def not_square(path: str | Path, width: int, height: int) -> DataError:
    return DataError(
        f"{path} is {width}x{height} px, not square: the model restores square aligned face "
        "crops; for whole photos use `quantface restore --whole` (or set align: true for a "
        "folder dataset)"
    )


def check_square(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Restorers take square aligned face crops: anything else is rejected, never squashed."""
    h, w = arr.shape[:2]
    if h != w:
        raise not_square(path, w, h)
    return arr


def write_image(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0, 1]."""
    import torch

    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """3xHxW float in [0, 1] -> HxWx3 uint8 (rounded, clamped)."""
    return t.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
