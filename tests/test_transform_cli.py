"""SmoothQuant, QuaRot and SVDQuant through the `quantface` CLI: quantize, cost.json, restore."""

import json

import pytest
import torch

from quantface.cli import main
from quantface.models.checkpoint import save_bundle

METHODS_UNDER_TEST = ["smoothquant", "quarot", "svdquant"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()  # `--threads 1` below sets the process-wide torch threads
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """An (untrained) micro FP model, its calibration and a few LQ faces, through the CLI."""
    from quantface.models.tiny import TinyRestorer
    from tests.conftest import MICRO_ARCH

    d = tmp_path_factory.mktemp("cli_transform")
    torch.manual_seed(0)
    model = TinyRestorer(MICRO_ARCH).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    save_bundle(model, d / "fp.pt")
    calib = ["calibrate", "--model", str(d / "fp.pt"), "--out", str(d / "calib.pt")]
    assert main([*calib, "--n-images", "2", "--batch-size", "2", "--sample-rows", "32"]) == 0
    data = ["prepare-data", "--dataset", "synthetic_faces", "--out", str(d / "syn")]
    assert main([*data, "--options", '{"n_images": 2, "image_size": 32}']) == 0
    return d


@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
def test_method_through_the_cli(method, cli_dir):
    d, out = cli_dir, cli_dir / method
    argv = ["quantize", "--model", str(d / "fp.pt"), "--method", method, "--bits", "w4a4"]
    argv += ["--calib", str(d / "calib.pt"), "--out", str(out), "--options", '{"alpha": 0.6}']
    argv[-2:-2] = ["--threads", "1"]
    if method == "quarot":
        argv[-1] = '{"a_clip_ratio": 0.9}'
    if method == "svdquant":
        argv[-1] = '{"num_grids": 4, "lowrank_iters": 3}'
    assert main(argv) == 0
    cost = json.loads((out / "cost.json").read_text())["total"]
    assert cost["extra_fp_params"] > 0
    key = {"smoothquant": "online_scale_ops", "quarot": "online_hadamard_ops"}
    assert cost[key.get(method, "lowrank_macs")] > 0
    restore = ["restore", "--model", str(out / "model.pt"), "--input", str(d / "syn" / "lq")]
    assert main([*restore, "--output", str(out / "img"), "--batch-size", "2"]) == 0
    assert len(list((out / "img").glob("*.png"))) == 2
