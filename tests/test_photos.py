"""Whole photos in, whole photos out (`restore --whole`) and the side-by-side grid (`compare`):
every face found and pasted back, the photo's size kept and changed only near faces, photos
without a face copied through, a user's files never replaced, real CodeFormer photos when
present."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from quantface.cli import main
from quantface.io import OWNED, read_image, write_image
from tests.conftest import SHARED_FACES

pytest.importorskip("facenet_pytorch", reason="MTCNN: pip install 'quantface-bench[faces]'")

WHOLE_IMGS = SHARED_FACES / "CodeFormer" / "inputs" / "whole_imgs"
# Two copies of the astronaut's face (a real photo shipped in scikit-image) at different places
# and scales on a grey 400x700 canvas: boxes (x0, y0, x1, y1) the faces must be found in.
FACE = skdata.astronaut()[20:220, 130:330]
PLACES = [((30, 40), 200), ((200, 400), 150)]  # ((top, left), side)


def multi_face_photo() -> np.ndarray:
    canvas = np.full((400, 700, 3), 120, np.uint8)
    for (top, left), side in PLACES:
        canvas[top : top + side, left : left + side] = cv2.resize(FACE, (side, side))
    return canvas


@pytest.fixture
def model(micro_model, tmp_path) -> Path:
    from quantface.models.checkpoint import save_bundle

    save_bundle(micro_model, tmp_path / "fp.pt")
    return tmp_path / "fp.pt"


@pytest.fixture
def quantized(model, tmp_path) -> Path:
    """A W4A4 min-max model of the same micro restorer, as `quantface quantize` writes it."""
    from quantface.api import calibrate, quantize

    calib = calibrate(model, n_images=4, batch_size=2, sample_rows=64, device="cpu")
    quantize(model, "maxmin", "w4a4", calib, device="cpu").save(tmp_path / "w4a4")
    return tmp_path / "w4a4" / "model.pt"


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "group.png", multi_face_photo())
    write_image(folder / "wall.png", np.full((120, 200, 3), 90, np.uint8))
    return folder


def whole(model: Path, inp: Path, out: Path, *extra: str) -> int:
    argv = ["restore", "--whole", "--model", str(model), "--input", str(inp), "--output", str(out)]
    return main([*argv, "--device", "cpu", *extra])


def test_every_face_is_restored_and_pasted_back_only_near_it(model, photos, tmp_path, caplog):
    out = tmp_path / "out"
    assert whole(model, photos, out) == 0
    record = json.loads((out / "faces.json").read_text())
    faces = record["photos"]["group.png"]["faces"]
    assert len(faces) == len(PLACES)
    for face, ((top, left), side) in zip(faces, PLACES):  # sorted left to right
        x0, y0, x1, y1 = face["box"]
        assert left <= (x0 + x1) / 2 <= left + side and top <= (y0 + y1) / 2 <= top + side
        assert face["prob"] >= 0.95 and np.asarray(face["landmarks"]).shape == (5, 2)
        assert read_image(out / face["crop"]).shape == (32, 32, 3)  # the model's input size
        assert read_image(out / face["restored"]).shape == (32, 32, 3)
    assert record["summary"]["faces"] == len(PLACES) and record["complete"]
    before, after = multi_face_photo(), read_image(out / "group.png")
    assert after.shape == before.shape
    changed = np.abs(after.astype(int) - before).max(axis=2) > 0
    near = np.zeros_like(changed)  # each face's square enlarged by half its side all round
    for (top, left), side in PLACES:
        near[
            max(0, top - side // 2) : top + 3 * side // 2,
            max(0, left - side // 2) : left + 3 * side // 2,
        ] = True
    assert changed.any() and not (changed & ~near).any()


def test_a_photo_without_a_face_is_copied_through_with_a_warning(model, photos, tmp_path, caplog):
    out = tmp_path / "out"
    assert whole(model, photos, out) == 0
    assert np.array_equal(read_image(out / "wall.png"), read_image(photos / "wall.png"))
    assert any("no face found" in r.message and "wall.png" in r.message for r in caplog.records)
    assert json.loads((out / "faces.json").read_text())["summary"]["without_face"] == ["wall.png"]


def test_a_quantized_model_restores_whole_photos_too(quantized, photos, tmp_path):
    out = tmp_path / "out"
    assert whole(quantized, photos, out) == 0
    assert json.loads((out / "faces.json").read_text())["model_is"] == "maxmin W4A4"


def test_whole_outputs_never_replace_a_users_file(model, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert whole(model, photos, out) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "did not write" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_image(out / "group.png", np.zeros((8, 8, 3), np.uint8))  # a user's file of an output name
    assert whole(model, photos, out, "--overwrite") == 2
    assert "group.png" in capsys.readouterr().err
    (out / "group.png").unlink()
    assert whole(model, photos, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert whole(model, photos, out, "--overwrite") == 0  # a rerun replaces only its own files
    assert "cropped_faces" in json.loads((out / OWNED).read_text())


def test_a_rerun_keeps_the_photos_an_interrupted_run_finished(model, photos, tmp_path, monkeypatch):
    """faces.json is written after every photo; the rerun with the same model restores only
    what is missing, and a folder of a user's files is refused before any face is detected."""
    import quantface.photos as photos_mod

    out = tmp_path / "out"
    calls = []
    real = photos_mod.restore_faces

    def stop_at_the_second(bundle, image, faces, batch_size=8):
        calls.append(len(faces))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(bundle, image, faces, batch_size)

    monkeypatch.setattr(photos_mod, "restore_faces", stop_at_the_second)
    with pytest.raises(RuntimeError, match="killed"):
        whole(model, photos, out)
    first = (out / "group.png").read_bytes()
    calls.clear()
    monkeypatch.setattr(photos_mod, "restore_faces", lambda *a: calls.append(a) or real(*a))
    assert whole(model, photos, out) == 0
    assert len(calls) == 1  # only wall.png: group.png was finished
    assert (out / "group.png").read_bytes() == first
    assert json.loads((out / "faces.json").read_text())["complete"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    monkeypatch.setattr(photos_mod, "detect_faces", lambda *a: pytest.fail("detected first"))
    assert whole(model, photos, mine) == 2


@pytest.mark.parametrize("where", ["same", "inside"])
def test_whole_output_equal_to_or_inside_the_input_is_refused(model, photos, where, capsys):
    out = photos if where == "same" else photos / "restored"
    before = sorted(p.name for p in photos.iterdir())
    assert whole(model, photos, out) == 2
    assert "--input folder" in capsys.readouterr().err
    assert sorted(p.name for p in photos.iterdir()) == before


def test_compare_writes_one_labelled_grid(model, quantized, photos, tmp_path):
    grid = tmp_path / "grid.png"
    inputs = [str(photos / "group.png"), str(photos / "wall.png")]
    argv = ["compare", "--input", *inputs, "--models", str(model), str(quantized)]
    assert main([*argv, "--out", str(grid), "--cell", "96", "--device", "cpu"]) == 0
    from quantface.compare import LABEL_PX

    assert read_image(grid).shape == (2 * (96 + LABEL_PX), 3 * 96, 3)  # rows x (input + 2)


def test_compare_refuses_writing_over_an_input(model, photos, capsys):
    photo = photos / "group.png"
    before = photo.read_bytes()
    argv = ["compare", "--input", str(photo), "--models", str(model), "--out", str(photo)]
    assert main(argv) == 2
    assert photo.read_bytes() == before


@pytest.mark.skipif(not WHOLE_IMGS.is_dir(), reason=f"CodeFormer whole photos absent: {WHOLE_IMGS}")
def test_codeformer_whole_photos_end_to_end(model, tmp_path):
    out = tmp_path / "out"
    assert whole(model, WHOLE_IMGS, out) == 0
    record = json.loads((out / "faces.json").read_text())
    assert record["summary"]["photos"] == len(record["photos"]) > 0
    for name, photo in record["photos"].items():
        assert photo["faces"], f"no face found in {name}"
        w, h = photo["size"]
        assert read_image(out / photo["output"]).shape == (h, w, 3)
