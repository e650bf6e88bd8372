"""`config/paper.yaml` against a tiny stand-in asset tree (tests/paper_assets.py) in `paper_assets/`.

The stand-in tree has the documented layout (SD-2.1-base diffusers folders, OSDFace's release
files, LQ/HQ test-set folders, an empty metric weights folder) but tiny random models and a few
generated faces, so the paper DAG can be listed and run on a CPU without any real asset.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from quantface.config import quantized_cells
from quantface.registry import METHODS
from tests.paper_assets import TINY_ARCH, write_face_folders, write_osdface_assets
from tests.test_workflow import ROOT, snakemake

PAPER = ROOT / "config" / "paper.yaml"
STUDY_METHODS = {
    "maxmin",
    "qdiffusion",
    "smoothquant",
    "quarot",
    "passionsr",
    "efficientdm",
    "svdquant",
    "quantface",
    "quantface_mp",
}
COUNTS = {"celeba_test": 3, "lfw_test": 2, "webphoto_test": 2, "wider_test": 2}


def paper_tree(workdir: Path) -> None:
    """The documented `paper_assets/` tree with tiny stand-ins (random tiny models, 9 faces)."""
    root = workdir / "paper_assets"
    assets = write_osdface_assets(root)
    assert assets["sd21_base"] == root / "stable-diffusion-2-1-base"
    data = root / "data"
    celeba = write_face_folders(data / "CelebA-Test", COUNTS["celeba_test"], paired=True, seed=1)
    assert celeba["lq"] == data / "CelebA-Test" / "lq"
    for i, name in enumerate(["LFW-Test", "WebPhoto-Test", "Wider-Test"]):
        folder = write_face_folders(data / f"_{name}", 2, paired=False, seed=2 + i, jpeg=True)
        folder["lq"].rename(data / name)
    (root / "weights").mkdir()


def perceptual_stand_ins(workdir: Path) -> None:
    """quantface_mp's perceptual metric (LPIPS) must have its weight files, or the config check
    stops the run; stand-ins are enough for a dry run, which never opens them."""
    from quantface.registry import METRICS

    for name in METRICS.get("lpips").weights:
        path = workdir / "paper_assets" / "weights" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"stand-in")


def paper_config(tmp_path: Path, **changes) -> tuple[Path, list[str]]:
    """paper.yaml with the stand-in counts and only the methods registered in this checkout."""
    config = yaml.safe_load(PAPER.read_text())
    for name, n in COUNTS.items():
        config["data"]["datasets"][name]["n_images"] = n
    methods = [m for m in config["methods"] if m in METHODS]
    config["methods"] = methods
    config.update(changes)
    path = tmp_path / "paper_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, methods


def test_paper_config_names_every_design_method_and_the_paper_sets():
    config = yaml.safe_load(PAPER.read_text())
    assert set(config["methods"]) == STUDY_METHODS
    assert config["bits"] == ["w6a6", "w4a6", "w4a4", "mp4"]
    assert set(config["data"]["datasets"]) == set(COUNTS)
    m = config["metrics"]
    assert set(m["full_reference"] + m["no_reference"]) >= {
        "clipiqa", "dists", "lpips", "maniqa", "musiq", "niqe", "deg", "lmd", "fid_hq", "fid_ffhq"
    }  # fmt: skip


def test_dry_run_lists_the_full_paper_job_set(tmp_path):
    work = tmp_path / "work"
    paper_tree(work)
    perceptual_stand_ins(work)
    config, methods = paper_config(tmp_path)
    r = snakemake(work, "-n", config=config)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    cells = len(quantized_cells(methods, ["w6a6", "w4a6", "w4a4", "mp4"]))  # mp4: MP methods only
    for rule, count in [
        ("prepare_data", 4),
        ("prepare_model", 1),
        ("calibrate", 1),
        ("quantize", cells),
        # one restore-and-score job per model covers the four test sets
        ("evaluate_input", 1),
        ("restore_evaluate_fp", 1),
        ("restore_evaluate", cells),
        ("tables", 1),
    ]:
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), rule


@pytest.mark.parametrize(
    "remove,named",
    [
        ("data/LFW-Test/0001.jpg", ["lfw_test", "expected 2 images", "LFW-Test"]),
        ("OSDFace/pretrained/associate_2.ckpt", ["associate_2.ckpt", "OSDFace"]),
    ],
)
def test_a_missing_asset_stops_the_dry_run_naming_the_file(tmp_path, remove, named):
    work = tmp_path / "work"
    paper_tree(work)
    perceptual_stand_ins(work)
    (work / "paper_assets" / remove).unlink()
    config, _ = paper_config(tmp_path)
    r = snakemake(work, "-n", config=config)
    assert r.returncode == 2
    assert all(n in r.stderr for n in named), r.stderr
    assert not (work / "results").exists()


@pytest.mark.slow
def test_reduced_paper_study_runs_end_to_end_on_cpu(tmp_path):
    work = tmp_path / "work"
    paper_tree(work)
    base = yaml.safe_load(PAPER.read_text())
    model = {**base["model"], "arch": {**base["model"]["arch"], **TINY_ARCH}}
    data = {
        **base["data"],
        "image_size": 64,
        "datasets": {
            "celeba_test": {**base["data"]["datasets"]["celeba_test"], "n_images": 3},
            "lfw_test": {**base["data"]["datasets"]["lfw_test"], "n_images": 2},
        },
    }
    metrics = {
        **base["metrics"],
        "batch_size": 2,
        "full_reference": ["psnr", "lpips", "deg", "lmd", "fid_hq"],
        "no_reference": ["piqe", "fid_ffhq"],
    }
    report = {"synthetic": ["celeba_test"], "realworld": ["lfw_test"], "qualitative_bits": "w4a4",
              "qualitative_images": 2}  # fmt: skip
    config, _ = paper_config(
        tmp_path,
        model=model,
        data=data,
        metrics=metrics,
        report=report,
        methods=["maxmin"],
        bits=["w4a4"],
        calibration={"n_images": 4, "batch_size": 2, "sample_rows": 64},
        restore={"batch_size": 2},
    )
    # the tables, not `all`: the figures (and their balanced calibration) are the micro study's
    # to test; here the paper's assets, metrics and tables are what is new
    r = snakemake(work, "results/tables/table1_synthetic.md", config=config)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(work / "results" / "metrics.csv")
    assert set(df["model"]) == {"osdface"}
    assert set(df["method"]) == {"input", "fp", "maxmin"}
    fr = df[(df["dataset"] == "celeba_test") & df["metric"].isin(["deg", "lmd", "psnr"])]
    assert fr["value"].notna().all() and len(fr) == 9
    skipped = df[df["metric"].isin(["lpips", "fid_hq", "fid_ffhq"])]
    assert skipped["value"].isna().all() and skipped["note"].str.startswith("skipped").all()
    assert (work / "results" / "tables" / "table1_synthetic.md").is_file()
