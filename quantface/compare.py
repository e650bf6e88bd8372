"""Side-by-side figure of whole photos: input | each model's restored photo.

One PNG, one row per photo and one column per model after the input, every cell the same square
(the photo letterboxed into it on grey), so photos of any shape line up and the grid's size is
known from the counts alone. Each column is labelled with what its model file records (`fp`, or
the method and bits `quantface quantize` stored), falling back to the file name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from quantface.data.align import detect_faces
from quantface.errors import CheckpointError, OutputError
from quantface.io import read_image, write_image
from quantface.models.checkpoint import load_bundle
from quantface.photos import describe_model, restore_faces

LABEL_PX = 20  # the label strip above each cell
log = logging.getLogger(__name__)


def fit_cell(image: np.ndarray, cell: int) -> np.ndarray:
    """The photo scaled to fit a cell x cell square, centred on grey (aspect ratio kept)."""
    h, w = image.shape[:2]
    scale = cell / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    out = np.full((cell, cell, 3), 128, np.uint8)
    top, left = (cell - nh) // 2, (cell - nw) // 2
    out[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return out


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """A white strip with `text` above the cell."""
    strip = Image.new("RGB", (image.shape[1], LABEL_PX), "white")
    ImageDraw.Draw(strip).text((4, 4), text, fill="black")
    return np.concatenate([np.asarray(strip), image])


@torch.no_grad()
def compare_photos(
    inputs: list[str | Path],
    models: list[str | Path],
    out: str | Path,
    *,
    cell: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[int, int]:
    """Write the grid PNG to `out`; returns its (width, height)."""
    inputs, models, out = [Path(p) for p in inputs], [Path(m) for m in models], Path(out)
    for m in models:
        if not m.is_file():
            raise CheckpointError(f"model file not found: {m}")
    if out.resolve() in {p.resolve() for p in [*inputs, *models]}:
        raise OutputError(f"--out {out} is one of the inputs or models; write elsewhere")
    photos = [read_image(p) for p in inputs]  # every input read before any model is loaded
    faces = [detect_faces(img, str(device)) for img in photos]
    for p, found in zip(inputs, faces):
        if not found:
            log.warning("compare: no face found in %s; shown unrestored", p)
    rows = [[labelled(fit_cell(img, cell), f"input {p.name}")] for p, img in zip(inputs, photos)]
    for m in models:
        bundle, _, meta = load_bundle(m, device=device)
        name = describe_model(meta) if meta else m.name
        for row, img, found in zip(rows, photos, faces):
            row.append(labelled(fit_cell(restore_faces(bundle, img, found)[0], cell), name))
    grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    write_image(out, grid)
    log.info("compare: %d photos x %d models -> %s", len(inputs), len(models), out)
    return grid.shape[1], grid.shape[0]
