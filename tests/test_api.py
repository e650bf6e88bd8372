"""The Python API: a notebook's few lines give what the CLI gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import torch

from quantface import api
from quantface.cli import main
from quantface.models.checkpoint import load_bundle, save_bundle


def test_calibrate_quantize_restore_evaluate_in_a_few_lines(micro_model, tmp_path):
    from quantface.registry import DATASETS

    fp = tmp_path / "fp.pt"
    save_bundle(micro_model, fp)
    DATASETS.get("synthetic_faces")().prepare(
        tmp_path / "syn", {"n_images": 2, "image_size": 32}, 1
    )

    calib = api.calibrate(fp, n_images=4, batch_size=2, sample_rows=32, device="cpu")
    result = api.quantize(fp, "maxmin", "w4a4", calib, device="cpu")
    result.save(tmp_path / "api")
    assert (
        api.restore(tmp_path / "api" / "model.pt", tmp_path / "syn" / "lq", tmp_path / "out") == 2
    )
    df = api.evaluate(
        tmp_path / "out", ["psnr"], ref=tmp_path / "syn" / "hq", out=tmp_path / "m.csv"
    )
    assert df["metric"].tolist() == ["psnr"] and (tmp_path / "m_per_image.csv").is_file()
    assert result.cost["total"]["bops_reduction"] > 0 and result.plan is not None

    # the CLI runs the same functions: same arguments, the same model
    args = ["--n-images", "4", "--batch-size", "2", "--sample-rows", "32", "--device", "cpu"]
    assert main(["calibrate", "--model", str(fp), "--out", str(tmp_path / "c.pt"), *args]) == 0
    argv = ["quantize", "--model", str(fp), "--method", "maxmin", "--bits", "w4a4"]
    argv += ["--calib", str(tmp_path / "c.pt"), "--out", str(tmp_path / "cli"), "--device", "cpu"]
    assert main(argv) == 0
    api_state = load_bundle(tmp_path / "api" / "model.pt")[0].state_dict()
    cli_state = load_bundle(tmp_path / "cli" / "model.pt")[0].state_dict()
    assert api_state.keys() == cli_state.keys()
    assert all(torch.equal(api_state[k], cli_state[k]) for k in api_state)
    api_cost = json.loads((tmp_path / "api" / "cost.json").read_text())
    cli_cost = json.loads((tmp_path / "cli" / "cost.json").read_text())
    assert api_cost["total"]["bops"] == cli_cost["total"]["bops"]
    assert isinstance(pd.read_csv(tmp_path / "m.csv"), pd.DataFrame)


def test_importing_the_api_imports_no_torch():
    code = "import sys, quantface.api; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
