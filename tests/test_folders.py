"""Folder datasets of the paper study: counts, pairing, unreadable files, re-degradation, alignment."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

from quantface.config import validate_config
from quantface.data.datasets import check_dataset
from quantface.errors import ConfigError, DataError
from quantface.io import read_image
from quantface.registry import DATASETS
from tests.conftest import SHARED_FACES
from tests.paper_assets import write_face_folders

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def celeba(tmp_path):
    return write_face_folders(tmp_path / "celeba", 5, paired=True, seed=1)


def opts(folders, **extra):
    return {**{k: str(v) for k, v in folders.items()}, "image_size": 64, **extra}


def test_paper_sets_are_registered_with_the_paper_counts():
    counts = {n: DATASETS.get(n)().expected for n in DATASETS.names() if n.endswith("_test")}
    assert counts == {
        "celeba_test": 3000,
        "lfw_test": 1711,
        "webphoto_test": 407,
        "wider_test": 970,
    }
    assert DATASETS.get("celeba_test")().paired and not DATASETS.get("lfw_test")().paired


def test_prepare_copies_pairs_and_writes_a_checked_manifest(celeba, tmp_path):
    ds = DATASETS.get("celeba_test")()
    assert ds.check_source(opts(celeba, n_images=5)) == 5
    m = ds.prepare(tmp_path / "out", opts(celeba, n_images=5), seed=0)
    assert m["n_images"] == 5 and m["paired"]
    check_dataset(tmp_path / "out")
    same = read_image(tmp_path / "out" / "lq" / "0003.png")
    assert np.array_equal(same, read_image(celeba["lq"] / "0003.png"))


def test_default_count_is_the_papers_and_a_mismatch_names_folder_and_counts(celeba):
    with pytest.raises(DataError, match=r"expected 3000 images in .*celeba/lq, found 5"):
        DATASETS.get("celeba_test")().check_source(opts(celeba))
    with pytest.raises(DataError, match="expected 6 images"):
        DATASETS.get("celeba_test")().check_source(opts(celeba, n_images=6))


def test_unpaired_stem_is_named(celeba):
    (celeba["hq"] / "0002.png").unlink()
    with pytest.raises(DataError, match="HQ lacks \\['0002'\\]"):
        DATASETS.get("celeba_test")().check_source(opts(celeba, n_images=5))


def test_unreadable_image_stops_config_validation_naming_file_and_key(tmp_path):
    lfw = write_face_folders(tmp_path / "lfw", 3, paired=False, seed=2, jpeg=True)
    (lfw["lq"] / "0001.jpg").write_bytes(b"not an image")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["data"]["datasets"]["lfw_test"] = {"lq": str(lfw["lq"]), "n_images": 3}
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    msg = str(err.value)
    assert "data.datasets.lfw_test" in msg and "0001.jpg" in msg and "\n" not in msg


def test_hq_only_folder_is_degraded_reproducibly(celeba, tmp_path):
    ds = DATASETS.get("celeba_test")()
    o = {"hq": str(celeba["hq"]), "image_size": 64, "n_images": 5, "synthesize_lq": True}
    ds.prepare(tmp_path / "a", o, seed=3)
    ds.prepare(tmp_path / "b", o, seed=3)
    a, b = tmp_path / "a" / "lq", tmp_path / "b" / "lq"
    for name in ("0000.png", "0004.png"):
        assert np.array_equal(read_image(a / name), read_image(b / name))
        hq = read_image(tmp_path / "a" / "hq" / name)
        assert not np.array_equal(read_image(a / name), hq)  # really degraded
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["synthesize_lq"] and manifest["degradation"]["blur_kernel_size"] == 41


@pytest.mark.skipif(not SHARED_FACES.is_dir(), reason="needs the project's shared face photos")
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("facenet_pytorch") is None,
    reason="MTCNN: pip install 'quantface-bench[faces]'",
)
def test_unaligned_photo_is_aligned_to_the_ffhq_template(tmp_path):
    from PIL import Image

    from quantface.data.align import detect_landmarks5

    photo = SHARED_FACES / "GFPGAN" / "inputs" / "whole_imgs" / "Blake_Lively.jpg"
    folder = tmp_path / "web" / "lq"
    folder.mkdir(parents=True)
    Image.open(photo).save(folder / "blake.png")  # a copy in tmp; the photo never enters the repo
    ds = DATASETS.get("webphoto_test")()
    ds.prepare(
        tmp_path / "out",
        {"lq": str(folder), "n_images": 1, "image_size": 256, "align": True},
        seed=0,
    )
    face = read_image(tmp_path / "out" / "lq" / "blake.png")
    assert face.shape == (256, 256, 3)
    template = (
        np.array([[193.0, 240.0], [318.9, 240.2], [256.6, 314.0], [201.3, 371.4], [313.1, 371.2]])
        / 2
    )
    assert np.abs(detect_landmarks5(face) - template).max() < 12  # px at 256
