"""Restore a folder of face images with a saved (FP or quantized) model.

Square inputs of another size are resized to the model's input (area down, bicubic up) and the
output keeps the model's size; grayscale/RGBA/16-bit inputs are converted to 8-bit RGB.
Non-square inputs are rejected with the file named: squashing them would distort the face and
quietly change what is measured. Outputs keep the input
file names and are written into a temp folder that replaces the output folder only when every
image is done, so an interrupted run leaves no partial folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from quantface.data.datasets import MANIFEST, check_dataset
from quantface.io import (
    atomic_dir,
    check_square,
    list_images,
    read_image,
    to_tensor,
    to_uint8,
    write_image,
)
from quantface.models.checkpoint import load_bundle

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


@torch.no_grad()
def restore_folder(
    model_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> int:
    """Restore every image on `device`; images are decoded and written on the CPU."""
    input_dir = Path(input_dir)
    if (input_dir.parent / MANIFEST).is_file():  # a prepared dataset: never a silently smaller set
        check_dataset(input_dir.parent)
    bundle, _, meta = load_bundle(model_path, device=device)
    files = list_images(input_dir)
    size = bundle.image_size
    t0 = time.perf_counter()
    with atomic_dir(output_dir) as tmp:
        for start in tqdm(range(0, len(files), batch_size), desc="restore", disable=None):
            chunk = files[start : start + batch_size]
            lq = torch.stack([load_for_model(p, size) for p in chunk]).to(device)
            for path, img in zip(chunk, bundle.restore(lq)):
                write_image(tmp / (path.stem + ".png"), to_uint8(img))
    log.info(
        "restored %d images with %s (%s) in %.1f s",
        len(files),
        model_path,
        meta.get("method", "?"),
        time.perf_counter() - t0,
    )
    return len(files)
