"""A user's files are never deleted or replaced: output folders that hold other files, outputs
equal to or inside inputs, files and symlinks as folders, name collisions, full disks, file
modes, resizing that is said aloud, and statistics of another model."""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantface.cli import main
from quantface.io import OWNED, read_image, write_image

RNG = np.random.default_rng(0)
FACE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
BIG = np.kron(RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))


@pytest.fixture
def model(micro_model, tmp_path) -> Path:
    from quantface.models.checkpoint import save_bundle

    save_bundle(micro_model, tmp_path / "fp.pt")
    return tmp_path / "fp.pt"


@pytest.fixture
def photos(tmp_path) -> Path:
    """A user's folder of 64-px photos (the micro model works at 32 px)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        write_image(folder / name, BIG)
    return folder


def restore(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(
        ["restore", "--model", str(model), "--input", str(inp), "--output", str(out), *extra]
    )


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error: " in err[-1], err[-3:]
    return err[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def user_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != OWNED)


# --- output folders that hold other files -------------------------------------------------------
def test_a_folder_with_a_users_files_is_refused_then_written_beside_them(
    model, photos, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    write_image(out / "holiday.png", FACE)
    before = snapshot(out)
    assert restore(model, photos, out) == 2
    line = error_line(capsys)
    assert str(out) in line and "--overwrite" in line and "did not write" in line
    assert snapshot(out) == before
    assert restore(model, photos, out, "--overwrite") == 0
    after = snapshot(out)
    assert {k: after[k] for k in before} == before  # the user's files are untouched
    assert user_files(out) == ["a.png", "b.png", "holiday.png", "notes.txt", "restore.json"]


def test_overwrite_never_replaces_a_users_file_of_an_output_name(model, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    write_image(out / "A.png", FACE)  # a.png's output on a case-insensitive filesystem
    before = snapshot(out)
    assert restore(model, photos, out, "--overwrite") == 2
    assert "A.png" in error_line(capsys)
    assert snapshot(out) == before


def test_a_rerun_replaces_only_its_own_outputs_and_skips_finished_ones(
    model, photos, tmp_path, caplog
):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert restore(model, photos, out) == 0
    first = snapshot(out)
    (out / "mine.txt").write_text("added by the user")
    caplog.clear()
    assert restore(model, photos, out, "--overwrite") == 0
    assert "2 of 2 images were written by an earlier run" in caplog.text
    assert (out / "mine.txt").read_text() == "added by the user"
    assert {k: v for k, v in snapshot(out).items() if k.endswith(".png")} == {
        k: v for k, v in first.items() if k.endswith(".png")
    }


# --- outputs that are, or hold, the inputs ------------------------------------------------------
@pytest.mark.parametrize("where", ["equal", "inside"])
def test_output_equal_to_or_inside_the_input_is_refused(model, photos, where, capsys):
    out = photos if where == "equal" else photos / "restored"
    before = snapshot(photos)
    assert restore(model, photos, out) == 2
    line = error_line(capsys)
    assert "--input folder" in line and str(photos) in line
    assert snapshot(photos) == before and not (photos / "restored").exists()


@pytest.mark.parametrize("where", ["parent", "dot"])
def test_output_above_the_input_deletes_nothing(model, photos, where, capsys, monkeypatch):
    parent = photos.parent
    monkeypatch.chdir(parent)
    out = Path(".") if where == "dot" else parent
    before = snapshot(photos)
    assert restore(model, photos, out) == 2  # it holds the input folder: foreign entries
    assert "--overwrite" in error_line(capsys)
    assert restore(model, photos, out, "--overwrite") == 0
    assert snapshot(photos) == before
    assert read_image(parent / "a.png").shape == (32, 32, 3)


def test_an_existing_file_or_symlink_as_output_folder_is_one_line_before_any_work(
    model, photos, tmp_path, capsys, monkeypatch
):
    import quantface.restore as restore_module

    monkeypatch.setattr(restore_module, "load_bundle", lambda *a: pytest.fail("work was done"))
    (tmp_path / "file.txt").write_text("keep")
    assert restore(model, photos, tmp_path / "file.txt") == 2
    assert "is a file, not a folder" in error_line(capsys)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert restore(model, photos, tmp_path / "link") == 2
    assert "is a symlink" in error_line(capsys)
    assert (tmp_path / "file.txt").read_text() == "keep"


def test_a_command_never_writes_over_what_it_reads(model, tmp_path, capsys):
    before = model.read_bytes()
    assert main(["cost", "--model", str(model), "--out", str(model)]) == 2
    line = error_line(capsys)
    assert "--out" in line and "--model" in line
    assert model.read_bytes() == before


def test_a_single_file_output_replaces_only_a_file_the_suite_wrote(model, tmp_path, capsys):
    """`--out holiday.png` naming a user's file is refused before any work; a file a command
    wrote (its folder's record names it) is replaced by the rerun."""
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"a user's photo")
    assert main(["cost", "--model", str(model), "--out", str(mine)]) == 2
    line = error_line(capsys)
    assert "--out" in line and "did not write" in line and "holiday.png" in line
    assert mine.read_bytes() == b"a user's photo"
    ours = tmp_path / "cost.json"
    assert main(["cost", "--model", str(model), "--out", str(ours)]) == 0
    assert "cost.json" in json.loads((tmp_path / OWNED).read_text())
    ours.write_text("{}")  # stands for the earlier run's file
    assert main(["cost", "--model", str(model), "--out", str(ours)]) == 0
    assert json.loads(ours.read_text()) != {}
    assert mine.read_bytes() == b"a user's photo"


def test_prepare_data_refuses_a_users_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    argv = ["prepare-data", "--dataset", "synthetic_faces", "--out", str(out)]
    assert main([*argv, "--options", json.dumps({"n_images": 1, "image_size": 32})]) == 2
    assert "did not write" in error_line(capsys)
    assert (out / "thesis.tex").read_text() == "years of work"


# --- names, orientation, sizes -------------------------------------------------------------------
def test_inputs_whose_names_collide_as_png_all_come_back(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("face.png", "face.jpg", "face.PNG", "other.jpg"):
        Image.fromarray(FACE).save(folder / name, format="JPEG" if "jpg" in name else "PNG")
    assert restore(model, folder, tmp_path / "out") == 0
    assert user_files(tmp_path / "out") == [
        "face.PNG.png",
        "face.jpg.png",
        "face.png.png",
        "other.png",
        "restore.json",
    ]
    record = json.loads((tmp_path / "out" / "restore.json").read_text())
    assert record["files"]["face.jpg"] == "face.jpg.png" and record["complete"]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    from quantface.io import image_size

    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3) and image_size(tmp_path / "phone.jpg") == (20, 40)
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # white half now on top


def test_resizing_is_logged_recorded_and_keep_size_returns_the_input_size(
    model, photos, tmp_path, caplog
):
    caplog.set_level("INFO")
    assert restore(model, photos, tmp_path / "small") == 0
    line = "2 images (2 of 64x64 px): 2 resized to the model's 32x32 px"
    assert line in caplog.text
    assert line in json.loads((tmp_path / "small" / "restore.json").read_text())["resizing"]
    assert read_image(tmp_path / "small" / "a.png").shape == (32, 32, 3)
    assert restore(model, photos, tmp_path / "whole", "--keep-size") == 0
    assert read_image(tmp_path / "whole" / "a.png").shape == (64, 64, 3)


def test_evaluate_says_when_it_resizes_references(model, photos, tmp_path, caplog):
    caplog.set_level("INFO")
    assert restore(model, photos, tmp_path / "out") == 0
    argv = ["evaluate", "--pred", str(tmp_path / "out"), "--ref", str(photos), "--metrics"]
    assert main([*argv, "psnr", "--out", str(tmp_path / "m.csv")]) == 0
    note = "2 fr pair images (2 of 64x64 px) resized to 32x32 px"
    assert note in caplog.text
    assert note in (tmp_path / "m.csv").read_text()


# --- full disks, file modes ----------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_keeps_finished_images(
    model, photos, tmp_path, capsys, monkeypatch
):
    from quantface import outputs

    real = outputs.write_image
    calls = []

    def fills_up(path, arr):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, arr)

    monkeypatch.setattr(outputs, "write_image", fills_up)
    out = tmp_path / "out"
    assert main(["restore", "--model", str(model), "--input", str(photos), "--output", str(out),
                 "--batch-size", "1"]) == 2  # fmt: skip
    line = error_line(capsys)
    assert "no space left on device" in line and "finished outputs were kept" in line
    assert user_files(out) == ["a.png", "restore.json"]
    calls.clear()
    monkeypatch.setattr(outputs, "write_image", lambda p, a: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))  # fmt: skip
    assert restore(model, photos, tmp_path / "never") == 2
    assert not (tmp_path / "never").exists()  # nothing finished: no empty folder left


def test_torch_save_on_a_full_disk_says_so(tmp_path, monkeypatch):
    from quantface.errors import DiskFullError
    from quantface.io import atomic_torch_save

    def failing_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match="disk is probably full"):
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "new" / "deeper" / "calib.pt")
    assert not (tmp_path / "new").exists()  # the folders made for it are gone again


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, check=False)  # fmt: skip
    return r.returncode == 0


def test_a_really_full_disk(micro_model, tmp_path, capsys):
    """On a real 160 KiB tmpfs (skipped where mounting is not permitted)."""
    from quantface.models.checkpoint import save_bundle

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "160k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        save_bundle(micro_model, tmp_path / "fp.pt")
        argv = ["cost", "--model", str(tmp_path / "fp.pt"), "--out", str(disk / "a" / "c.json")]
        (disk / "filler").write_bytes(b"\0" * (160 * 1024 - 4096))
        code = main(argv)
        assert code == 2, code
        assert "no space left on device" in error_line(capsys)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(model, photos, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert restore(model, photos, tmp_path / "out") == 0
        assert (
            main(["cost", "--model", str(model), "--out", str(tmp_path / "c" / "cost.json")]) == 0
        )
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "c" / "cost.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


# --- statistics of another model ------------------------------------------------------------------
def test_calibration_of_another_model_is_refused(micro_model, micro_images, tmp_path, capsys):
    from quantface.models.checkpoint import save_bundle
    from quantface.quant.calibration import collect_calibration

    save_bundle(micro_model, tmp_path / "fp.pt")
    other = copy.deepcopy(micro_model)
    torch.nn.init.normal_(other.unet.conv_out.weight, std=0.1)
    save_bundle(other, tmp_path / "other.pt")
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 16)
    calib.record_model(tmp_path / "fp.pt")
    calib.save(tmp_path / "calib.pt")
    argv = [
        "quantize",
        "--method",
        "maxmin",
        "--bits",
        "w8a8",
        "--calib",
        str(tmp_path / "calib.pt"),
    ]
    assert main([*argv, "--model", str(tmp_path / "other.pt"), "--out", str(tmp_path / "q")]) == 2
    assert "was not made from" in error_line(capsys) and not (tmp_path / "q").exists()
    assert main([*argv, "--model", str(tmp_path / "fp.pt"), "--out", str(tmp_path / "q")]) == 0
