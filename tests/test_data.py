import json

import numpy as np
import pytest

from quantface.data.degradation import DegradationConfig, degrade
from quantface.data.synthetic_faces import generate_face
from quantface.errors import DataError
from quantface.io import read_image, write_image
from quantface.registry import DATASETS


def _psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_faces_are_deterministic_and_varied():
    a, b = generate_face(3, 64), generate_face(3, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    faces = np.stack([generate_face(i, 64) for i in range(12)]).astype(float)
    # different seeds give clearly different faces, not one template
    diffs = [np.abs(faces[i] - faces[j]).mean() for i in range(12) for j in range(i + 1, 12)]
    assert min(diffs) > 10
    assert faces.std(axis=0).mean() > 25


def test_degradation_is_seeded_and_degrades():
    hq = generate_face(0, 128)
    cfg = DegradationConfig()
    lq1 = degrade(hq, np.random.default_rng([1, 2]), cfg)
    lq2 = degrade(hq, np.random.default_rng([1, 2]), cfg)
    lq3 = degrade(hq, np.random.default_rng([1, 3]), cfg)
    assert np.array_equal(lq1, lq2) and not np.array_equal(lq1, lq3)
    assert lq1.shape == hq.shape
    assert _psnr(lq1, hq) < 35
    mild = DegradationConfig(
        blur_sigma=(0.1, 0.1), downsample=(1, 1), noise=(0, 0), jpeg=(100, 100)
    )
    assert _psnr(degrade(hq, np.random.default_rng(0), mild), hq) > _psnr(lq1, hq)


def test_synthetic_dataset_writes_pairs_and_manifest(tmp_path):
    from quantface.data.datasets import check_dataset

    out = tmp_path / "syn"
    m = DATASETS.get("synthetic_faces")().prepare(out, {"n_images": 3, "image_size": 32}, seed=5)
    assert m["n_images"] == 3 and m["paired"]
    assert sorted(p.name for p in (out / "lq").iterdir()) == m["files"]
    assert json.loads((out / "manifest.json").read_text())["files"] == m["files"]
    again = tmp_path / "syn2"
    DATASETS.get("synthetic_faces")().prepare(again, {"n_images": 3, "image_size": 32}, seed=5)
    for name in m["files"]:
        assert (out / "hq" / name).read_bytes() == (again / "hq" / name).read_bytes()
    check_dataset(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].reverse()  # a manifest in generation order, not name order, is valid
    (out / "manifest.json").write_text(json.dumps(manifest))
    check_dataset(out)
    (out / "hq" / m["files"][1]).unlink()
    with pytest.raises(DataError, match="missing"):
        check_dataset(out)


def test_realworld_embedded_has_real_faces_without_ground_truth(tmp_path):
    out = tmp_path / "rw"
    m = DATASETS.get("realworld_embedded")().prepare(out, {"n_images": 4, "image_size": 64}, 0)
    assert not m["paired"] and not (out / "hq").exists()
    assert m["files"][0] == "astronaut.png" and len(m["files"]) == 4
    img = read_image(out / "lq" / "astronaut.png")
    assert img.shape == (64, 64, 3) and img.std() > 20


def test_unreadable_images_are_named(tmp_path):
    bad = tmp_path / "broken.png"
    write_image(tmp_path / "ok.png", np.zeros((8, 8, 3), np.uint8))
    bad.write_bytes((tmp_path / "ok.png").read_bytes()[:20])
    with pytest.raises(DataError, match="broken.png"):
        read_image(bad)
    gray = tmp_path / "gray.png"
    from PIL import Image

    Image.fromarray(np.full((5, 5), 7, np.uint8)).save(gray)
    assert read_image(gray).shape == (5, 5, 3)
