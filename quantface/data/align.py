"""Face cropping for unaligned photos in the embedded default.

The embedded real-world set needs faces cut out of whole photos (scikit-image's astronaut) and
brought to the model's square input. We detect the face with scikit-image's LBP frontal-face
cascade (its model ships inside scikit-image, so nothing is downloaded), take a square box
enlarged to FFHQ-like framing (face box ~ half the crop, eyes a little above the centre) and
resize. Full 5-landmark FFHQ alignment with paste-back (facexlib) is for the paper study.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data as skdata
from skimage.feature import Cascade

from quantface.errors import DataError

FACE_TO_CROP = 2.0  # crop side / detected face side, roughly FFHQ's framing
_cascade: Cascade | None = None


def detect_largest_face(image: np.ndarray) -> tuple[int, int, int, int]:
    """(row, col, height, width) of the largest frontal face; DataError if none is found."""
    global _cascade
    if _cascade is None:
        _cascade = Cascade(skdata.lbp_frontal_face_cascade_filename())
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    side = min(gray.shape)
    found = _cascade.detect_multi_scale(
        gray,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(side // 10, side // 10),
        max_size=(side, side),
    )
    if not found:
        raise DataError("no face found")
    best = max(found, key=lambda d: d["width"] * d["height"])
    return best["r"], best["c"], best["height"], best["width"]


def crop_face(image: np.ndarray, size: int) -> np.ndarray:
    """Square FFHQ-like crop around the largest face, resized to size x size (reflect padding)."""
    r, c, h, w = detect_largest_face(image)
    side = int(max(h, w) * FACE_TO_CROP)
    cy, cx = r + h * 0.55, c + w / 2  # detector boxes sit high on the face
    top, left = int(cy - side / 2), int(cx - side / 2)
    pad = side
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT101)
    crop = padded[top + pad : top + pad + side, left + pad : left + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)
