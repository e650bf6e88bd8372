"""The paper's metric set offline: LPIPS/DISTS/FID code paths, the skipped path, Deg./LMD.

!!! RANDOM WEIGHTS, TESTS ONLY !!! The `random_cache` fixture writes *randomly initialised*
AlexNet / VGG16 / Inception backbones, random LPIPS/DISTS heads and random FFHQ statistics into a
temporary TORCH_HOME, under the real file names, so that pyiqa's loading and scoring code runs
without a download. The numbers it produces mean nothing; a user run never sees these files
(metrics whose files are absent are reported as skipped).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
import torchvision

from quantface.evaluate import evaluate_folder
from quantface.io import read_image, to_tensor
from quantface.metrics.fid import FFHQ_STATS_FILE, INCEPTION_FILE, frechet_distance
from quantface.registry import METRICS
from tests.conftest import SHARED_FACES
from tests.paper_assets import write_face_folders

FID_DIMS = 64  # first Inception block: keeps the test's eigen-decompositions tiny


@pytest.fixture(scope="module")
def random_cache(tmp_path_factory):
    """RANDOM-WEIGHT cache (labelled): real file names, meaningless weights."""
    from unittest import mock

    from pyiqa.archs.inception import fid_inception_v3

    root = tmp_path_factory.mktemp("RANDOM_WEIGHTS_tests_only")
    ckpt, pyiqa_dir = root / "hub" / "checkpoints", root / "hub" / "pyiqa"
    ckpt.mkdir(parents=True)
    pyiqa_dir.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt / "alexnet-owt-7be5be79.pth")
    torch.save(torchvision.models.vgg16().state_dict(), ckpt / "vgg16-397923af.pth")
    chns = [64, 192, 384, 256, 256]
    head = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate(chns)}
    torch.save(head, pyiqa_dir / "LPIPS_v0.1_alex-df73285e.pth")
    dists = {"alpha": torch.rand(1, 1475, 1, 1) * 0.1, "beta": torch.rand(1, 1475, 1, 1) * 0.1}
    torch.save(dists, pyiqa_dir / "DISTS_weights-f5e65c96.pth")
    with mock.patch("pyiqa.archs.inception.load_pretrained_network"):  # build, do not load
        torch.save(fid_inception_v3().state_dict(), root / INCEPTION_FILE)
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(FID_DIMS, FID_DIMS))
    np.savez(root / FFHQ_STATS_FILE, mu=rng.normal(size=FID_DIMS), sigma=basis @ basis.T / 64)
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_face_folders(tmp_path_factory.mktemp("faces"), 4, paired=True, seed=4)


@pytest.fixture
def small_fid(monkeypatch):
    for name in ("fid_hq", "fid_ffhq"):
        monkeypatch.setattr(METRICS.get(name), "dims", FID_DIMS)


def test_frechet_distance_equals_the_sqrtm_formula():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(16, 16))
    mu2, s2 = rng.normal(size=16), b @ b.T / 16
    for n in (6, 40):  # fewer and more samples than dimensions
        x = rng.normal(size=(n, 16)) * 2 + 1
        mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
        assert math.isclose(frechet_distance(x, mu2, s2), want, rel_tol=1e-6)


def test_learned_metrics_run_offline_on_the_random_cache(random_cache, faces, tmp_path, small_fid):
    df = evaluate_folder(
        pred=faces["lq"],
        ref=faces["hq"],
        fp=None,
        metrics=["lpips", "dists", "fid_hq", "fid_ffhq"],
        out=tmp_path / "m.csv",
        labels={"model": "osdface", "method": "fp", "bits": "fp32", "dataset": "x", "seed": 0},
        weights_dir=random_cache,
        batch_size=2,
    )
    values = dict(zip(df["metric"], df["value"]))
    assert all(np.isfinite(v) for v in values.values()), values
    assert values["fid_hq"] > 0
    notes = dict(zip(df["metric"], df["note"]))
    assert "clean" in notes["fid_hq"] and "ffhq_clean_trainval70k_512" in notes["fid_ffhq"]
    # FID of a folder against itself is zero; the HQ statistics are cached beside the folder
    same = evaluate_folder(
        faces["hq"],
        faces["hq"],
        None,
        ["fid_hq"],
        tmp_path / "s.csv",
        {"model": "m", "method": "fp", "bits": "fp32", "dataset": "x", "seed": 0},
        random_cache,
        2,
    )
    assert abs(same["value"][0]) < 1e-6
    assert list(faces["hq"].parent.glob(".fid_stats_hq_*.npz"))


def test_absent_weights_are_reported_as_skipped_with_the_file(faces, tmp_path):
    metrics = ["lpips", "dists", "maniqa", "musiq", "clipiqa", "fid_hq", "fid_ffhq"]
    df = evaluate_folder(
        faces["lq"],
        faces["hq"],
        None,
        metrics,
        tmp_path / "m.csv",
        {"model": "m", "method": "fp", "bits": "fp32", "dataset": "x", "seed": 0},
        tmp_path / "empty_weights",
        2,
    )
    assert df["value"].isna().all()
    notes = dict(zip(df["metric"], df["note"]))
    assert notes["maniqa"] == "skipped (weights absent: hub/pyiqa/ckpt_koniq10k.pt)"
    assert notes["fid_ffhq"] == f"skipped (weights absent: {INCEPTION_FILE})"
    assert pd.read_csv(tmp_path / "m.csv")["note"].str.startswith("skipped").all()


def test_identity_metrics_are_zero_on_identical_faces_and_grow_with_blur(faces):
    deg, lmd = METRICS.get("deg"), METRICS.get("lmd")
    assert deg.missing_weights(faces["hq"]) == []  # dlib models ship in an installed package
    deg.build(faces["hq"])
    lmd.build(faces["hq"])
    hq = torch.stack([to_tensor(read_image(p)) for p in sorted(faces["hq"].iterdir())])
    assert deg.score(hq, hq).abs().max() < 1e-3
    assert lmd.score(hq, hq).abs().max() == 0
    blurred = torch.nn.functional.avg_pool2d(hq, 5, stride=1, padding=2)
    assert (deg.score(blurred, hq) > 0).all()


@pytest.mark.skipif(not SHARED_FACES.is_dir(), reason="needs the project's shared face photos")
def test_deg_separates_the_same_person_from_other_people():
    deg = METRICS.get("deg")
    deg.build(SHARED_FACES)
    gray = SHARED_FACES / "CodeFormer" / "inputs" / "gray_faces"

    def load(*names):
        return torch.stack([to_tensor(read_image(gray / f"{n}.png")) for n in names])

    same = deg.score(load("Einstein01", "Hepburn01"), load("Einstein02", "Hepburn02"))
    other = deg.score(load("Einstein01", "Hepburn01"), load("Hepburn02", "Einstein02"))
    assert same.max() < other.min()
