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
are detected before the names are claimed, since the names depend on how many there are; a
folder holding a user's files is refused before that. `faces.json` is rewritten after every
photo, so a rerun with the same model file and input (restore's run key) keeps the photos an
earlier, interrupted run finished, with their recorded faces, instead of redoing them.
"""

from __future__ import annotations

import json
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
from quantface.outputs import OutputFolder, check_writable
from quantface.restore import check_paths, output_names, run_key
from quantface.timing import log_timing

RECORD = "faces.json"
CROPS, RESTORED = "cropped_faces", "restored_faces"
log = logging.getLogger(__name__)


def restore_faces(
    bundle: RestorerBundle, image: np.ndarray, faces: list[Face], batch_size: int = 8
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(whole restored photo, aligned input crops, restored crops) of one RGB photo; its faces
    go through the model `batch_size` at a time (a crowd photo need not fit in one batch)."""
    if not faces:
        return image.copy(), [], []
    aligned = [align_face(image, bundle.image_size, f.landmarks) for f in faces]
    crops = [face for face, _ in aligned]
    restored = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        lq = torch.stack([to_tensor(c) for c in chunk]).to(module_device(bundle))
        restored += [to_uint8(t) for t in bundle.restore(lq)]
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


def _finished(
    output_dir: Path, key: dict[str, Any], names: dict[Path, str]
) -> dict[Path, dict[str, Any]]:
    """Photos an earlier run with the same key wrote completely: their faces.json rows."""
    try:
        earlier = json.loads((output_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or earlier.get("run") != key:
        return {}
    done = {}
    for path, name in names.items():
        row = earlier.get("photos", {}).get(path.name)
        if not row or row.get("output") != name:
            continue
        files = [name] + [f[k] for f in row["faces"] for k in ("crop", "restored")]
        if all((output_dir / f).is_file() for f in files):
            done[path] = row
    return done


def _recorded_faces(row: dict[str, Any]) -> list[Face]:
    return [Face(tuple(f["box"]), f["prob"], np.asarray(f["landmarks"])) for f in row["faces"]]


@torch.no_grad()
def restore_photos(
    model_path: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    batch_size: int = 8,
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
    check_writable(output_dir, overwrite)  # before any detection: refusals come first
    files = [input_dir] if input_dir.is_file() else list_images(input_dir)
    names = output_names(files)
    key = run_key(model_path, input_dir, keep_size=True)
    done = _finished(output_dir, key, names)
    if done:
        log.info("restore --whole: %d of %d photos were written by an earlier run; kept",
                 len(done), len(files))  # fmt: skip
    bundle, _, meta = load_bundle(model_path, device=device)
    t0 = time.perf_counter()
    found = {
        f: _recorded_faces(done[f]) if f in done else detect_faces(read_image(f), str(device))
        for f in files
    }
    detect_s = time.perf_counter() - t0
    stems = {f: names[f][: -len(".png")] for f in files}
    claimed = [*names.values(), CROPS, RESTORED]
    for f, faces in found.items():
        for i, face in enumerate(faces):
            claimed += [_face_record(face, stems[f], i)[k] for k in ("crop", "restored")]
    out = OutputFolder(output_dir, claimed, overwrite=overwrite, records=[RECORD])
    try:
        return _write(out, bundle, meta, key, found, done, names, stems, batch_size, detect_s)
    except BaseException:
        out.abort()
        raise


def _write(
    out: OutputFolder,
    bundle: RestorerBundle,
    meta: dict[str, Any],
    key: dict[str, Any],
    found: dict[Path, list[Face]],
    done: dict[Path, dict[str, Any]],
    names: dict[Path, str],
    stems: dict[Path, str],
    batch_size: int,
    detect_s: float,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "written_by": "quantface restore --whole",
        "run": key,
        "model": key["model"],
        "model_is": describe_model(meta),
        "model_size": bundle.image_size,
        "photos": {p.name: row for p, row in done.items()},
        "complete": False,
    }
    out.write_json(RECORD, record)
    t0 = time.perf_counter()
    for path, faces in found.items():
        if path in done:
            continue
        t = time.perf_counter()
        image = read_image(path)
        if not faces:
            log.warning("restore --whole: no face found in %s; copied through", path)
        whole, crops, restored = restore_faces(bundle, image, faces, batch_size)
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
        out.write_json(RECORD, record)  # after every photo: a rerun keeps the finished ones
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
