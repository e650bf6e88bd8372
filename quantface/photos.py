"""Whole photos in, whole photos out: every face detected, restored and pasted back.

What GFPGAN's and CodeFormer's users run on their own photos: MTCNN finds every confident face
(quantface.data.align), facexlib's helper warps each onto the FFHQ template, the chosen model
(FP or quantized, any file `quantface restore` takes) restores the aligned crops, and each is
pasted back with facexlib's soft mask, so the photo keeps its size and changes only near faces.

Faces are aligned straight to the model's input size (32 px for the micro model, 512 for
OSDFace), not at 512 and then resized: the template scales with the size, so one warp gives the
model exactly its input, and the inverse of that same affine pastes the output back; a second
resample would only blur the crop. A photo without a face is copied through (as PNG) with a
warning: a holiday folder always holds a landscape or two, and stopping there would lose the rest.

Outputs follow quantface.outputs (a user's files are never replaced): `<photo>.png` at the
photo's size, `cropped_faces/` and `restored_faces/` (aligned crops, `<photo>_NN.png`) and
`faces.json` (per photo: boxes, landmarks, probabilities, seconds; and the run's summary). Faces
are detected before anything is claimed, since the names depend on how many there are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantface.data.align import Face, align_face, detect_faces, paste_back
from quantface.device import module_device
from quantface.errors import CheckpointError
from quantface.io import list_images, read_image, to_tensor, to_uint8
from quantface.models.base import RestorerBundle
from quantface.models.checkpoint import load_bundle
from quantface.outputs import OutputFolder
from quantface.restore import check_paths, output_names
from quantface.timing import log_timing

RECORD = "faces.json"
CROPS, RESTORED = "cropped_faces", "restored_faces"
log = logging.getLogger(__name__)


def restore_faces(
    bundle: RestorerBundle, image: np.ndarray, faces: list[Face]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(whole restored photo, aligned input crops, restored crops) of one RGB photo."""
    if not faces:
        return image.copy(), [], []
    aligned = [align_face(image, bundle.image_size, f.landmarks) for f in faces]
    crops = [face for face, _ in aligned]
    lq = torch.stack([to_tensor(c) for c in crops]).to(module_device(bundle))
    restored = [to_uint8(t) for t in bundle.restore(lq)]
    whole = image
    for face, (_, affine) in zip(restored, aligned):
        whole = paste_back(whole, face, affine)
    return whole, crops, restored


def describe_model(meta: dict[str, Any]) -> str:
    """`fp` or `method W4A4`: what a model file says it is (quantize records method and bits)."""
    method, bits = meta.get("method", "fp"), meta.get("bits")
    return method if not bits or method == "fp" else f"{method} {str(bits).upper()}"


def _face_record(face: Face, stem: str, i: int) -> dict[str, Any]:
    return {
        "box": [round(v, 2) for v in face.box],
        "prob": round(face.prob, 5),
        "landmarks": np.round(face.landmarks, 2).tolist(),
        "crop": f"{CROPS}/{stem}_{i:02d}.png",
        "restored": f"{RESTORED}/{stem}_{i:02d}.png",
    }


@torch.no_grad()
def restore_photos(
    model_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore every face of every photo of `input_dir` (a folder, or one photo file) into
    `output_dir`; returns the summary
    written to faces.json (photos, faces, photos without a face, seconds)."""
    model_path, input_dir, output_dir = Path(model_path), Path(input_dir), Path(output_dir)
    if not model_path.is_file():
        raise CheckpointError(f"model file not found: {model_path}")
    check_paths(input_dir, output_dir)
    files = [input_dir] if input_dir.is_file() else list_images(input_dir)
    names = output_names(files)
    bundle, _, meta = load_bundle(model_path, device=device)
    t0 = time.perf_counter()
    found = {f: detect_faces(read_image(f), str(device)) for f in files}
    detect_s = time.perf_counter() - t0
    stems = {f: names[f][: -len(".png")] for f in files}
    claimed = [*names.values(), CROPS, RESTORED]
    for f, faces in found.items():
        for i, face in enumerate(faces):
            claimed += [_face_record(face, stems[f], i)[k] for k in ("crop", "restored")]
    out = OutputFolder(output_dir, claimed, overwrite=overwrite, records=[RECORD])
    try:
        return _write(out, bundle, meta, model_path, found, names, stems, detect_s)
    except BaseException:
        out.abort()
        raise


def _write(
    out: OutputFolder,
    bundle: RestorerBundle,
    meta: dict[str, Any],
    model_path: Path,
    found: dict[Path, list[Face]],
    names: dict[Path, str],
    stems: dict[Path, str],
    detect_s: float,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "written_by": "quantface restore --whole",
        "model": str(model_path.resolve()),
        "model_is": describe_model(meta),
        "model_size": bundle.image_size,
        "photos": {},
        "complete": False,
    }
    out.write_json(RECORD, record)
    t0 = time.perf_counter()
    for path, faces in found.items():
        t = time.perf_counter()
        image = read_image(path)
        if not faces:
            log.warning("restore --whole: no face found in %s; copied through", path)
        whole, crops, restored = restore_faces(bundle, image, faces)
        rows = [_face_record(f, stems[path], i) for i, f in enumerate(faces)]
        for row, crop, face in zip(rows, crops, restored):
            out.write_image(row["crop"], crop)
            out.write_image(row["restored"], face)
        out.write_image(names[path], whole)
        record["photos"][path.name] = {
            "output": names[path],
            "size": [image.shape[1], image.shape[0]],
            "faces": rows,
            "seconds": round(time.perf_counter() - t, 3),
        }
    seconds = time.perf_counter() - t0
    summary = {
        "photos": len(found),
        "faces": sum(len(f) for f in found.values()),
        "without_face": sorted(p.name for p, f in found.items() if not f),
        "detect_seconds": round(detect_s, 3),
        "restore_paste_seconds": round(seconds, 3),
    }
    out.write_json(RECORD, {**record, "summary": summary, "complete": True})
    log.info(
        "restore --whole: %d faces in %d photos with %s (%s): detection %.1f s, restore and "
        "paste-back %.1f s",
        summary["faces"],
        summary["photos"],
        record["model"],
        record["model_is"],
        detect_s,
        seconds,
    )
    log_timing("restore_photo", len(found), seconds + detect_s)
    return summary
