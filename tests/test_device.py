"""Device plumbing: the resolver's rules, the one-line errors, and an explicit device reaching
every component. CI has no GPU, so components are checked on `torch.device("meta")` (a real
device that holds shapes only: a tensor left on the CPU shows up) or by recording the device a
third-party constructor is given; the micro study on CUDA is the `gpu`-marked test at the end."""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import quantface.device
import quantface.evaluate
import quantface.restore  # imported before a test patches what it imports by name
from quantface.cli import main
from quantface.config import load_config, validate_config
from quantface.device import resolve_device, to_cpu
from quantface.errors import ConfigError, DeviceError
from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import current_layout
from quantface.quant.calibration import CalibrationSet, collect_calibration
from quantface.quant.plan import BitPlan
from quantface.registry import METRICS
from tests.conftest import MICRO_ARCH

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --- the resolver -------------------------------------------------------------------------------
def test_auto_is_cuda_when_available_else_cpu(monkeypatch, no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_explicit_cuda_without_a_gpu_says_what_was_found(no_cuda):
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=rf"device '{spec}' requested but torch \S+ "):
            resolve_device(spec)


def test_cuda_index_must_be_visible_and_names_are_checked(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\) are visible \(cuda:0\.\.cuda:1\)"):
        resolve_device("cuda:2")
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="is not one of auto, cpu, cuda, cuda:N"):
            resolve_device(bad)


def test_to_cpu_keeps_the_structure_and_detaches_every_tensor():
    grad = torch.ones(2, requires_grad=True)
    out = to_cpu({"a": grad * 2, "b": [grad, 3], "c": ("x", grad)})
    assert out["b"][1] == 3 and out["c"][0] == "x" and isinstance(out["c"], tuple)
    tensors = [out["a"], out["b"][0], out["c"][1]]
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


# --- one line, exit 2, before any job -------------------------------------------------------------
def _default_config() -> dict:
    return load_config(ROOT / "config" / "config.yaml", validate=False)


def test_config_device_key_is_validated(no_cuda):
    config = _default_config()
    assert validate_config({**config, "device": "cpu"})
    with pytest.raises(ConfigError, match=r"^config key 'device': device 'cuda' requested but"):
        validate_config({**config, "device": "cuda"})
    with pytest.raises(ConfigError, match=r"^config key 'device': 'gpu' does not match"):
        validate_config({**config, "device": "gpu"})


def test_check_config_and_a_subcommand_refuse_cuda_without_a_gpu(no_cuda, tmp_path, capsys):
    overlay = tmp_path / "cuda.yaml"
    overlay.write_text("device: cuda\n")
    assert main(["check-config", str(ROOT / "config" / "config.yaml"), str(overlay)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "config key 'device'" in err and "finds no GPU" in err
    # the device is resolved before the command reads anything: the model need not exist
    argv = ["restore", "--model", "absent.pt", "--input", "x", "--output", "y", "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("quantface restore: error: device 'cuda' requested but torch")


# --- every computing subcommand forwards the resolved device ------------------------------------
class _Reached(Exception):
    """Raised by a recorder once it has seen the device: the command need not finish."""


def _recorder(seen: dict, key: str = "device"):
    def record(*args, **kwargs):
        seen["device"] = kwargs.get(key, args[-1] if args else None)
        raise _Reached

    return record


# (argv, module, attribute replaced by the recorder)
WIRING = [
    (["prepare-data", "--dataset", "synthetic_faces", "--out", "o"], None, None),
    (["train", "--out", "o.pt"], "quantface.models.train", "train_restorer"),
    (["prepare-model", "--out", "o.pt"], "quantface.models.train", "train_restorer"),
    (["pretrain-vae", "--out", "o.safetensors"], "quantface.models.train", "pretrain_vae"),
    (
        ["calibrate", "--model", "m.pt", "--out", "c.pt"],
        "quantface.models.checkpoint",
        "load_bundle",
    ),
    (
        ["quantize", "--model", "m.pt", "--method", "maxmin", "--bits", "w4a4", "--calib", "c"]
        + ["--out", "o"],
        "quantface.models.checkpoint",
        "load_bundle",
    ),
    (["cost", "--model", "m.pt", "--out", "c.json"], "quantface.models.checkpoint", "load_bundle"),
    (
        ["export", "--model", "m.pt", "--out", "o.safetensors", "--report", "r.json"],
        "quantface.models.checkpoint",
        "load_bundle",
    ),
    (
        ["restore", "--model", "m", "--input", "i", "--output", "o"],
        "quantface.restore",
        "restore_folder",
    ),
    (
        ["evaluate", "--pred", "p", "--metrics", "psnr", "--out", "o.csv"],
        "quantface.evaluate",
        "evaluate_folder",
    ),
]


@pytest.mark.parametrize("argv,module,attr", WIRING, ids=[w[0][0] for w in WIRING])
def test_every_computing_subcommand_forwards_the_device(argv, module, attr, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(quantface.device, "resolve_device", lambda spec: META)
    if module is None:  # prepare-data: the dataset's prepare gets it (folder sets align there)
        from quantface.data.datasets import SyntheticFaces

        monkeypatch.setattr(SyntheticFaces, "prepare", _recorder(seen))
    else:
        monkeypatch.setattr(importlib.import_module(module), attr, _recorder(seen))
    with pytest.raises(_Reached):
        main([*argv, "--device", "cuda"])
    assert str(seen["device"]) == "meta"


def test_help_documents_device_on_every_computing_subcommand(capsys):
    for argv, _, _ in WIRING:
        with pytest.raises(SystemExit):
            main([argv[0], "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--device DEVICE" in text and "(default: auto)" in text, argv[0]


# --- components land on the device ---------------------------------------------------------------
def _tensors(module: torch.nn.Module):
    return [*module.parameters(), *module.buffers()]


@pytest.fixture(scope="module")
def quantized_files(tmp_path_factory):
    """An FP micro model, its calibration file and a quantface-quantized model (every transform
    kind: Hadamard, scales, low-rank branches, learned step sizes), all written from the CPU."""
    from quantface.models.tiny import TinyRestorer

    d = tmp_path_factory.mktemp("device")
    torch.manual_seed(0)
    fp = TinyRestorer(MICRO_ARCH).eval()
    torch.nn.init.normal_(fp.unet.conv_out.weight, std=0.05)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calib = collect_calibration(copy.deepcopy(fp), images, 2, 32)
    calib.save(d / "calib.pt")
    save_bundle(fp, d / "fp.pt")
    plan = BitPlan.uniform(fp.quant_targets(), 4, 4)
    q = quantize_bundle("quantface", fp, calib, plan, {"steps": 2, "crop": 16}).model
    save_bundle(q, d / "q.pt", layout=current_layout(q))
    return d


def test_model_and_calibration_files_load_onto_the_device(quantized_files):
    for name in ("fp.pt", "q.pt"):
        bundle, layout, _ = load_bundle(quantized_files / name, device=META)
        assert {t.device for t in _tensors(bundle)} == {META}, name
    assert layout  # the quantized one: quantizer scales and transform buffers moved too
    calib = CalibrationSet.load(quantized_files / "calib.pt", device=META)
    stats = [t for s in calib.stats.values() for t in s.values()]
    assert calib.images.device == META and {t.device for t in stats} == {META}


FAST = {"quarot": {"w_clip": False}, "svdquant": {}, "passionsr": {"let_steps": 1, "lbq_steps": 1}}


@pytest.mark.parametrize("method", ["quantface", *FAST])
def test_quantized_forward_creates_no_tensor_off_the_input_device(method, quantized_files):
    """What a forward pass makes (timesteps, dynamic ranges, Hadamard factors, low-rank branches,
    shifts) follows its input: on meta, a stray CPU tensor in an elementwise op raises. Between
    them the methods cover every run-time transform; quantface's model comes from the file."""
    if method == "quantface":
        model = load_bundle(quantized_files / "q.pt", device=META)[0]
    else:
        fp, _, _ = load_bundle(quantized_files / "fp.pt")
        calib = CalibrationSet.load(quantized_files / "calib.pt")
        plan = BitPlan.uniform(fp.quant_targets(), 4, 4)
        model = quantize_bundle(method, fp, calib, plan, FAST[method]).model.to(META)
    with torch.no_grad():
        out = model.restore(torch.rand(1, 3, 32, 32, device=META))
    assert out.device == META


def test_pyiqa_metrics_are_created_on_the_device(monkeypatch, tmp_path):
    import pyiqa

    seen = []
    monkeypatch.setattr(pyiqa, "create_metric", lambda name, device=None, **kw: seen.append(device))
    for name in ("psnr", "niqe", "maniqa"):
        METRICS.get(name).build(tmp_path, META)
    assert seen == [META] * 3


def test_fid_features_run_on_the_device(monkeypatch, tmp_path):
    from pyiqa.archs import fid_arch, inception

    class FakeInception(torch.nn.Module):
        def __init__(self, output_blocks):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

    seen = {}
    monkeypatch.setattr(inception, "InceptionV3", FakeInception)
    monkeypatch.setattr(fid_arch, "get_folder_features", lambda d, model, **kw: seen.update(kw))
    metric = METRICS.get("fid_hq")
    metric.build(tmp_path, META)
    metric.features(tmp_path)
    assert seen["device"] == META
    assert {t.device for t in _tensors(metric._model)} == {META}


def test_arcface_runs_on_the_device(monkeypatch, tmp_path):
    from facexlib.recognition import arcface_arch

    from quantface.metrics.identity import ArcFaceIRSE50

    class FakeBackbone(torch.nn.Linear):
        def __init__(self, **kw):
            super().__init__(4, 4)

    torch.save(FakeBackbone().state_dict(), tmp_path / "arcface.pth")
    monkeypatch.setattr(arcface_arch, "Backbone", FakeBackbone)
    net = ArcFaceIRSE50(tmp_path / "arcface.pth", META).net
    assert {t.device for t in _tensors(net)} == {META}


def test_face_detector_runs_on_the_device(monkeypatch):
    import numpy as np

    from quantface.data import align

    seen = []

    class FakeMTCNN:
        def __init__(self, keep_all, device):
            seen.append(device)

        def detect(self, image, landmarks):
            return [[0, 0, 9, 9]], [0.99], [np.zeros((5, 2))]

    monkeypatch.setitem(sys.modules, "facenet_pytorch", type(sys)("facenet_pytorch"))
    sys.modules["facenet_pytorch"].MTCNN = FakeMTCNN
    align._mtcnn.cache_clear()
    try:
        align.detect_landmarks5(np.zeros((16, 16, 3), np.uint8), "meta")
    finally:
        align._mtcnn.cache_clear()
    assert seen == ["meta"]


# --- the workflow passes the device --------------------------------------------------------------
COMPUTING = re.compile(
    r"quantface (prepare-data|train|prepare-model|pretrain-vae|calibrate|quantize|cost|export"
    r"|restore|evaluate|restore-evaluate) "
)


def test_every_computing_rule_passes_its_device_resource():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    common = re.search(r"CELL_COMMON = \((.*?)\n\)", text, re.DOTALL).group(1)
    rules = re.split(r"^rule ", text.replace("+ CELL_COMMON", common), flags=re.MULTILINE)[1:]
    computing = [r for r in rules if COMPUTING.search(r)]
    # ONNX Runtime's CPU engine is what `snakemake deploy` measures: its export runs on the CPU
    on_cpu = {r.split(":")[0] for r in computing if "--device cpu" in r}
    assert on_cpu == {"deploy_export"}
    computing = [r for r in computing if r.split(":")[0] not in on_cpu]
    assert len(computing) == 10  # calibrate_balanced included
    for rule in computing:
        name = rule.split(":")[0]
        assert "device=DEVICE," in rule and "--device {resources.device}" in rule, name


# --- out of memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"),
        MemoryError(),
    ],
    ids=["cuda", "cpu-allocator", "python"],
)
def test_out_of_memory_is_one_line_with_stage_and_peak(error, monkeypatch, capsys):
    import quantface.restore

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(quantface.restore, "restore_folder", fail)
    assert (
        main(["restore", "--model", "m", "--input", "i", "--output", "o", "--device", "cpu"]) == 1
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(
        r"quantface restore: error: out of memory in stage 'restore' \(peak RSS [0-9.]+ GiB\)",
        line,
    ), line


def test_other_runtime_errors_are_not_reported_as_memory(monkeypatch):
    import quantface.restore

    def fail(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(quantface.restore, "restore_folder", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["restore", "--model", "m", "--input", "i", "--output", "o"])


# --- the micro study on a GPU ------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_micro_study_on_cuda(tmp_path):
    """Train, calibrate, quantize (a training method and a transform one), restore and score the
    micro model with `--device cuda`; every file it writes loads on the CPU."""
    d, dev = tmp_path, ["--device", "cuda"]
    train = {"vae_steps": 3, "latent_steps": 3, "pixel_steps": 2, "pool_size": 4, "batch_size": 2}
    opts = json.dumps({"arch": MICRO_ARCH, "train": {**train, "crop": 16}})
    assert main(["train", "--out", str(d / "fp.pt"), "--options", opts, *dev]) == 0
    calibrate = ["calibrate", "--model", str(d / "fp.pt"), "--out", str(d / "calib.pt")]
    assert (
        main([*calibrate, "--n-images", "4", "--batch-size", "2", "--sample-rows", "32", *dev]) == 0
    )
    data = json.dumps({"n_images": 2, "image_size": 32})
    assert (
        main(
            [
                "prepare-data",
                "--dataset",
                "synthetic_faces",
                "--out",
                str(d / "syn"),
                "--options",
                data,
            ]
        )
        == 0
    )
    for method, options in [("quarot", {}), ("quantface", {"steps": 2, "crop": 16})]:
        out = d / method
        quantize = ["quantize", "--model", str(d / "fp.pt"), "--method", method, "--bits", "w4a4"]
        quantize += [
            "--calib",
            str(d / "calib.pt"),
            "--out",
            str(out),
            "--options",
            json.dumps(options),
        ]
        assert main([*quantize, *dev]) == 0
        restore = ["restore", "--model", str(out / "model.pt"), "--input", str(d / "syn" / "lq")]
        assert main([*restore, "--output", str(out / "images"), *dev]) == 0
        evaluate = ["evaluate", "--pred", str(out / "images"), "--ref", str(d / "syn" / "hq")]
        evaluate += ["--metrics", "psnr,ssim", "--out", str(out / "metrics.csv")]
        assert main([*evaluate, "--weights-dir", str(d / "w"), *dev]) == 0
        saved = torch.load(out / "model.pt", weights_only=True)  # where it was written from
        assert {t.device.type for t in saved["state_dict"].values()} == {"cpu"}
    calib = torch.load(d / "calib.pt", weights_only=True)
    stats = [t for s in calib["stats"].values() for t in s.values()]
    assert {t.device.type for t in [calib["images"], *stats]} == {"cpu"}
