"""Face cropping for unaligned photos in the embedded default.

The embedded real-world set needs faces cut out of whole photos (scikit-image's astronaut) and
brought to the model's square input. We detect the face with scikit-image's LBP frontal-face
cascade (its model ships inside scikit-image, so nothing is downloaded), take a square box
enlarged to FFHQ-like framing (face box ~ half the crop, eyes a little above the centre) and
resize. Full 5-landmark FFHQ alignment with paste-back (facexlib, below) is for the paper study.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


# --- FFHQ 5-point alignment for the paper study (unaligned photos in, 512x512 faces out) -------
# Face detection + 5 landmarks come from MTCNN, whose three small networks ship inside the
# facenet-pytorch 2.5.3 wheel (the `faces` extra: later releases pin an old torch); the warp onto
# the FFHQ template and the paste-back are facexlib's face-restoration helper, the tool GFPGAN,
# CodeFormer and OSDFace use. The helper's own RetinaFace/ParseNet weights cannot be downloaded
# here, so it is built with those two loaders switched off and given MTCNN's points instead
# (MTCNN orders eyes, nose, mouth corners as facexlib does). MTCNN runs on the command's device;
# the warp and paste-back are OpenCV on the CPU whatever the device (facexlib only puts its
# switched-off networks there).
MIN_FACE_PROB = 0.95  # MTCNN false positives on textured backgrounds sit at 0.8-0.9


FACES_EXTRA = "pip install 'quantface-bench[faces]'"  # facenet-pytorch without its stale pins


@dataclass(frozen=True)
class Face:
    """One MTCNN detection in photo pixels: box (x0, y0, x1, y1), probability, 5 points (x, y)."""

    box: tuple[float, float, float, float]
    prob: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@functools.lru_cache(maxsize=2)
def _mtcnn(device: str):
    """One MTCNN per device and process (its three networks load in a second)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as e:
        raise DataError(f"face detection needs MTCNN (facenet-pytorch): `{FACES_EXTRA}`") from e
    return MTCNN(keep_all=True, device=device)


def detect_faces(image: np.ndarray, device: str = "cpu") -> list[Face]:
    """Every face of an RGB photo with probability >= MIN_FACE_PROB, left to right ([] if none)."""
    boxes, probs, points = _mtcnn(str(device)).detect(image, landmarks=True)
    if boxes is None:
        return []
    boxes = np.asarray(np.asarray(boxes).tolist(), float)  # numpy 2: object arrays
    probs = np.asarray(np.asarray(probs).tolist(), float)
    points = np.asarray(np.asarray(points).tolist(), float)
    faces = [
        Face(tuple(float(v) for v in b), float(p), pts)
        for b, p, pts in zip(boxes, probs, points)
        if p >= MIN_FACE_PROB
    ]
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def detect_landmarks5(image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(5, 2) landmarks (x, y) of the largest confident face; DataError if there is none."""
    faces = detect_faces(image, device)
    if not faces:
        raise DataError(f"no face with confidence >= {MIN_FACE_PROB} found")
    return max(faces, key=lambda f: f.area).landmarks


def _helper(size: int):
    """facexlib's FaceRestoreHelper without its downloading RetinaFace/ParseNet loaders."""
    from unittest import mock

    import facexlib.utils.face_restoration_helper as frh

    with (
        mock.patch.object(frh, "init_detection_model", lambda *a, **k: None),
        mock.patch.object(frh, "init_parsing_model", lambda *a, **k: None),
    ):
        return frh.FaceRestoreHelper(1, face_size=size, use_parse=False, device="cpu")


def align_face(
    image: np.ndarray, size: int = 512, landmarks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RGB photo -> (size x size FFHQ-aligned face, 2x3 affine photo->face)."""
    if landmarks is None:
        landmarks = detect_landmarks5(image)
    helper = _helper(size)
    helper.read_image(np.ascontiguousarray(image[..., ::-1]))
    helper.all_landmarks_5 = [np.asarray(landmarks, np.float32)]
    helper.align_warp_face()
    return helper.cropped_faces[0][..., ::-1].copy(), helper.affine_matrices[0]


def paste_back(image: np.ndarray, face: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Put a restored aligned face back into the original RGB photo (facexlib's soft mask)."""
    helper = _helper(face.shape[0])
    helper.read_image(np.ascontiguousarray(image[..., ::-1]))
    helper.affine_matrices = [affine]
    helper.add_restored_face(np.ascontiguousarray(face[..., ::-1]))
    helper.get_inverse_affine()
    return helper.paste_faces_to_input_image()[..., ::-1].copy()
