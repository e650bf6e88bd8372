"""Hostile inputs (issue 10): each bad config, image, checkpoint or number ends in one named error
(exit code 2 through the CLI) or a documented conversion, never in a traceback deep in torch and
never in a silently smaller set. Interruption and determinism live in test_interrupt.py and
test_determinism.py."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from quantface.cli import main
from quantface.errors import CheckpointError, DataError
from quantface.io import read_image, write_image
from quantface.methods.pipeline import quantize_bundle

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "config" / "micro.yaml"


def _one_error_line(capsys, command: str) -> str:
    """The CLI's last stderr line, checked to be its one-line error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"quantface {command}: error: "), err[-3:]
    return err[-1]


# --- config -------------------------------------------------------------------------------------
def _mp(c):
    c.update(methods=["maxmin", "quantface_mp"], bits=["w4a4", "mp2"])


def _mp_budget(c):
    _mp(c)
    c["bits"] = ["w4a4", "mp4"]
    c["method_options"] = {"quantface_mp": {"candidates": [4, 6], "budget": 3.5}}


def _mp_ok(c):
    _mp(c)
    c["bits"] = ["w4a4", "mp4"]
    c["method_options"] = {"quantface_mp": {}}


# (mutation, text the one line must hold: the key, then what is allowed there)
BAD_CONFIGS = {
    "unknown_key": (lambda c: c.update(colour="red"), ["'<top level>'", "allowed keys: seed"]),
    "unknown_nested_key": (
        lambda c: c["model"].update(nme="tiny"),
        ["'model'", "'nme' was unexpected", "allowed keys: name, arch"],
    ),
    "wrong_type": (
        lambda c: c["calibration"].update(n_images="many"),
        ["'calibration.n_images'", "not of type 'integer'"],
    ),
    "unknown_method": (
        lambda c: c.update(methods=["maxmin", "maxmim"]),
        ["'methods'", "unknown method 'maxmim'", "known: efficientdm"],
    ),
    "unknown_dataset": (
        lambda c: c["data"]["datasets"].update(ffhq={"n_images": 2}),
        ["'data.datasets'", "unknown dataset 'ffhq'", "known: celeba_test"],
    ),
    "unknown_metric": (
        lambda c: c["metrics"].update(no_reference=["piqe", "brisque2"]),
        ["'metrics.no_reference'", "unknown metric 'brisque2'", "known: clipiqa"],
    ),
    "bits_w4a": (lambda c: c.update(bits=["w4a"]), ["'bits'", "'w4a' is malformed", "wXaY"]),
    "bits_w0a4": (lambda c: c.update(bits=["w0a4"]), ["'bits'", "'w0a4'", "in 2..16"]),
    "mp_budget_below_candidates": (
        _mp,
        ["'bits'", "budget of 2 bits", "smallest candidate bit-width 3", "allowed: a budget >= 3"],
    ),
    "mp_budget_option_below_candidates": (
        _mp_budget,
        ["'method_options.quantface_mp.budget'", "3.5", "allowed: a budget >= 4"],
    ),
    # values each key accepts alone that a job would reject: the check rejects them too
    "arch_attention_per_level": (
        lambda c: c["model"]["arch"].update(unet_attention=[True]),
        ["'model.arch'", "unet_attention has 1 entries for 2 UNet levels"],
    ),
    "arch_groups_do_not_divide": (
        lambda c: c["model"]["arch"].update(unet_norm_groups=7),
        ["'model.arch'", "cannot be built", "divisible by num_groups (7)"],
    ),
    "arch_unlike_the_shipped_vae": (
        lambda c: c["model"]["arch"].update(pretrained_vae=True),
        ["'model.arch'", "does not match the pretrained VAE"],
    ),
    "perceptual_no_reference": (
        lambda c: (_mp_ok(c), c["method_options"]["quantface_mp"].update(perceptual="piqe")),
        ["'method_options.quantface_mp.perceptual'", "'piqe' is no-reference"],
    ),
    "perceptual_unknown": (
        lambda c: (_mp_ok(c), c["method_options"]["quantface_mp"].update(perceptual="sim")),
        ["'method_options.quantface_mp.perceptual'", "unknown metric 'sim'"],
    ),
    "variant_name_escapes_results": (
        lambda c: c.update(
            ablation={"bits": "w4a4", "variants": {"../../x": {"method": "maxmin"}}}
        ),
        ["'ablation.variants'", "'../../x' does not match"],
    ),
}


def _bad_config(tmp_path: Path, case: str) -> Path:
    config = yaml.safe_load(MICRO.read_text())
    BAD_CONFIGS[case][0](config)
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_through_the_cli(case, tmp_path, capsys):
    assert main(["check-config", str(_bad_config(tmp_path, case))]) == 2
    line = _one_error_line(capsys, "check-config")
    for needle in BAD_CONFIGS[case][1]:
        assert needle in line, line


def _snakemake_dry_run(workdir: Path, configfile: Path) -> int:
    """Snakemake's own parse of the real Snakefile, in-process (0.1 s, not 30 s per subprocess).

    The `snakemake -n` command itself exits the same way: test_workflow.py's
    test_bad_config_stops_before_any_job_with_exit_code_2 runs it for one of these cases.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf = api.workflow(
                snakefile=ROOT / "Snakefile",
                workdir=workdir,
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[configfile]),
            )
            wf.dag(DAGSettings()).execute_workflow(executor="dryrun")
    except SystemExit as e:
        return int(e.code)
    return 0


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_stops_snakemake_at_parse_time(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Snakemake changes into its workdir; undone after the test
    assert _snakemake_dry_run(tmp_path, _bad_config(tmp_path, case)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("quantface: invalid config: ")
    for needle in BAD_CONFIGS[case][1]:
        assert needle in err[-1], err[-1]
    assert not (tmp_path / "results").exists()


def test_valid_micro_config_passes_the_cli_check(capsys):
    assert main(["check-config", str(MICRO)]) == 0
    assert "valid" in capsys.readouterr().out


def test_every_method_option_is_in_the_schema():
    """Option keys are validated at parse time only if the schema knows each method's options
    (tests/test_options.py checks their types and defaults too)."""
    from quantface.config import schema
    from quantface.methods.options import Options
    from quantface.registry import METHODS

    options = schema()["properties"]["method_options"]["properties"]
    for name in METHODS.names():
        fields = getattr(METHODS.get(name), "options", Options).defaults()
        assert set(options[name].get("properties", {})) == set(fields), name
        assert options[name]["additionalProperties"] is False, name


# --- data ---------------------------------------------------------------------------------------
def _png_bytes(arr: np.ndarray) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb(arr: np.ndarray) -> bytes:
    """A PNG whose header claims 60000 x 60000 px (a decompression bomb)."""
    import struct
    import zlib

    data = bytearray(_png_bytes(arr))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", 60000, 60000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


FACE = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
UNREADABLE = {  # file content -> the reason that must be named with the file
    "zero_byte": (b"", "cannot identify image file"),
    "truncated": (_png_bytes(FACE)[:60], "cannot read image"),
    "not_an_image": (b"%PDF-1.4 hello", "cannot identify image file"),
    "decompression_bomb": (_bomb(FACE), "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_image_is_named_not_a_torch_crash(case, tmp_path):
    path = tmp_path / "0001.png"
    path.write_bytes(UNREADABLE[case][0])
    with pytest.raises(DataError) as err:
        read_image(path)
    assert "0001.png" in str(err.value) and UNREADABLE[case][1] in str(err.value).lower()


def test_grayscale_rgba_and_16_bit_images_become_rgb(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([FACE, np.zeros((32, 32), np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), FACE)  # alpha dropped, not blended
    # PIL's own 16-bit -> RGB conversion clips to white; we scale
    assert np.array_equal(read_image(tmp_path / "gray16.png"), np.dstack([gray] * 3))


@pytest.fixture
def saved_model(micro_model, tmp_path):
    from quantface.models.checkpoint import save_bundle

    save_bundle(micro_model, tmp_path / "fp.pt")
    return tmp_path / "fp.pt"


def _restore(model: Path, folder: Path, out: Path) -> int:
    return main(["restore", "--model", str(model), "--input", str(folder), "--output", str(out)])


@pytest.mark.parametrize("case", sorted(UNREADABLE) + ["non_square"])
def test_restore_names_the_bad_file_and_writes_nothing(case, saved_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "0000.png", FACE)
    bad = UNREADABLE[case][0] if case in UNREADABLE else _png_bytes(FACE[:, :20])
    (folder / "0001.png").write_bytes(bad)
    assert _restore(saved_model, folder, tmp_path / "out") == 2
    line = _one_error_line(capsys, "restore")
    assert "0001.png" in line
    if case == "non_square":
        assert "is 20x32 px, not square" in line
        assert "--whole" in line
    assert not (tmp_path / "out").exists()


def test_restore_resizes_square_images_of_another_size(saved_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "big.png", np.kron(FACE, np.ones((3, 3, 1), np.uint8)))  # 96 px
    Image.fromarray(FACE[:16, :16, 0]).save(folder / "small_gray.png")  # 16 px, grayscale
    assert _restore(saved_model, folder, tmp_path / "out") == 0
    for name in ("big.png", "small_gray.png"):
        assert read_image(tmp_path / "out" / name).shape == (32, 32, 3)


def test_empty_folder_is_named(saved_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")  # ignored, so still empty
    assert _restore(saved_model, tmp_path / "empty", tmp_path / "out") == 2
    assert "no images" in _one_error_line(capsys, "restore")
    from quantface.registry import DATASETS

    with pytest.raises(DataError, match=r"expected 4 images in .*empty, found 0"):
        DATASETS.get("lfw_test")().check_source({"lq": str(tmp_path / "empty"), "n_images": 4})


@pytest.fixture
def celeba(tmp_path):
    from tests.paper_assets import write_face_folders

    return write_face_folders(tmp_path / "celeba", 4, paired=True, seed=1, size=48)


def _prepare(folders: dict[str, Path], out: Path, **extra):
    from quantface.registry import DATASETS

    opts = {**{k: str(v) for k, v in folders.items()}, "image_size": 32, "n_images": 4, **extra}
    return DATASETS.get("celeba_test")().prepare(out, opts, seed=0)


def test_folder_set_converts_modes_and_resizes_square_images(celeba, tmp_path):
    from quantface.data.datasets import check_dataset

    hq = read_image(celeba["hq"] / "0001.png")
    Image.fromarray(hq[..., 0]).save(celeba["hq"] / "0001.png")  # grayscale HQ
    Image.fromarray(np.dstack([hq, np.full(hq.shape[:2], 128, np.uint8)])).save(
        celeba["lq"] / "0002.png"
    )  # RGBA LQ
    m = _prepare(celeba, tmp_path / "out")
    assert m["n_images"] == 4 and m["resized_to_image_size"] == 8  # 48 px -> 32 px, LQ and HQ
    check_dataset(tmp_path / "out")  # counts and files checked against the manifest
    for sub in ("lq", "hq"):
        for name in m["files"]:
            assert read_image(tmp_path / "out" / sub / name).shape == (32, 32, 3)


def test_folder_set_rejects_non_square_and_truncated_images(celeba, tmp_path):
    hq = read_image(celeba["hq"] / "0003.png")
    Image.fromarray(hq[:, :40]).save(celeba["hq"] / "0003.png")
    with pytest.raises(DataError, match=r"hq/0003.png is 40x48 px, not square"):
        _prepare(celeba, tmp_path / "out")
    write_image(celeba["hq"] / "0003.png", hq)
    data = (celeba["lq"] / "0000.png").read_bytes()
    (celeba["lq"] / "0000.png").write_bytes(data[: len(data) // 2])  # header intact
    from quantface.registry import DATASETS

    opts = {k: str(v) for k, v in celeba.items()}
    assert DATASETS.get("celeba_test")().check_source({**opts, "n_images": 4}) == 4
    with pytest.raises(DataError, match=r"lq/0000.png: image file is truncated|0000.png"):
        _prepare(celeba, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_set_smaller_than_its_manifest(tmp_path, capsys):
    from quantface.registry import DATASETS

    data = tmp_path / "syn"
    DATASETS.get("synthetic_faces")().prepare(data, {"n_images": 3, "image_size": 32}, seed=0)
    (data / "lq" / "00001.png").unlink()
    argv = ["evaluate", "--pred", str(data / "lq"), "--metrics", "piqe", "--out"]
    argv += [str(tmp_path / "m.csv"), "--manifest", str(data / "manifest.json")]
    assert main(argv) == 2
    line = _one_error_line(capsys, "evaluate")
    assert "has 2 images" in line and "lists 3" in line and "00001" in line
    assert not (tmp_path / "m.csv").exists()


def test_lq_without_its_hq_pair_is_named(celeba, tmp_path, capsys):
    """At config time (folders) and at scoring time (a prediction with no reference image).

    tests/test_folders.py::test_unpaired_stem_is_named covers the config-time case in detail.
    """
    from quantface.registry import DATASETS

    (celeba["hq"] / "0002.png").unlink()
    with pytest.raises(DataError, match=r"HQ lacks \['0002'\]"):
        DATASETS.get("celeba_test")().check_source(
            {"lq": str(celeba["lq"]), "hq": str(celeba["hq"]), "n_images": 4}
        )
    argv = ["evaluate", "--pred", str(celeba["lq"]), "--ref", str(celeba["hq"]), "--metrics"]
    argv += ["psnr", "--out", str(tmp_path / "m.csv")]
    assert main(argv) == 2
    assert "lacks the pair of 1 images, e.g. 0002.png" in _one_error_line(capsys, "evaluate")


# --- models and weights -------------------------------------------------------------------------
def _bad_checkpoints(saved: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one line must say)."""
    from quantface.models.checkpoint import FORMAT

    payload = torch.load(saved, weights_only=True)
    out = {"missing": (tmp_path / "missing.pt", "model file not found")}
    data = saved.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    out["truncated"] = (tmp_path / "truncated.pt", "cannot read model file")
    (tmp_path / "empty.pt").write_bytes(b"")
    out["zero_byte"] = (tmp_path / "empty.pt", "the file is empty")
    torch.save(payload["state_dict"], tmp_path / "plain.pt")
    out["plain_state_dict"] = (tmp_path / "plain.pt", f"no '{FORMAT}' header")
    torch.save({**payload, "version": 2, "package_version": "0.9.0"}, tmp_path / "newer.pt")
    out["other_version"] = (
        tmp_path / "newer.pt",
        "written by quantface 0.9.0 (file format version 2)",
    )
    cfg = {**payload["config"], "unet_channels": [8, 16]}
    torch.save({**payload, "config": cfg}, tmp_path / "arch.pt")
    out["wrong_architecture"] = (tmp_path / "arch.pt", "does not match the 'tiny' architecture")
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    for case, value, needle in [
        ("nan_weights", float("nan"), "holds NaN or Inf values"),
        ("inf_weights", float("inf"), "holds NaN or Inf values"),
    ]:
        t = payload["state_dict"][key].clone()
        t.view(-1)[0] = value
        torch.save(
            {**payload, "state_dict": {**payload["state_dict"], key: t}}, tmp_path / f"{case}.pt"
        )
        out[case] = (tmp_path / f"{case}.pt", f"{key} {needle}")
    for dtype, name in [(torch.int64, "int64"), (torch.bool, "bool")]:
        t = payload["state_dict"][key].to(dtype)
        torch.save(
            {**payload, "state_dict": {**payload["state_dict"], key: t}}, tmp_path / f"{name}.pt"
        )
        out[f"{name}_weights"] = (tmp_path / f"{name}.pt", f"{key} holds {name} values")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": _RunsCode()}))
    out["pickle_with_code"] = (tmp_path / "evil.pt", "could run code")
    return out


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PICKLE_RAN",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "truncated",
        "zero_byte",
        "plain_state_dict",
        "other_version",
        "wrong_architecture",
        "pickle_with_code",
        "nan_weights",
        "inf_weights",
        "int64_weights",
        "bool_weights",
    ],
)
def test_bad_model_file_is_one_line_naming_file_and_expectation(
    case, saved_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path, needle = _bad_checkpoints(saved_model, tmp_path)[case]
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", FACE)
    assert _restore(path, folder, tmp_path / "out") == 2
    line = _one_error_line(capsys, "restore")
    assert path.name in line and needle in line, line
    assert not (tmp_path / "PICKLE_RAN").exists()


def test_wrong_architecture_names_the_expected_shape(saved_model, tmp_path):
    from quantface.models.checkpoint import load_bundle

    path = _bad_checkpoints(saved_model, tmp_path)["wrong_architecture"][0]
    with pytest.raises(
        CheckpointError, match=r"differ in shape \(e\.g\. .* is \[16, .*expected \[8,"
    ):
        load_bundle(path)


def test_saved_files_carry_format_and_package_version(saved_model, micro_model, tmp_path):
    from quantface import __version__
    from quantface.quant.calibration import CalibrationSet, collect_calibration
    from quantface.quant.plan import BitPlan

    payload = torch.load(saved_model, weights_only=True)
    assert payload["version"] == 1 and payload["package_version"] == __version__
    calib = collect_calibration(copy.deepcopy(micro_model), torch.rand(2, 3, 32, 32), 2, 16)
    calib.record_model(tmp_path / "fp.pt")
    calib.save(tmp_path / "calib.pt")
    d = torch.load(tmp_path / "calib.pt", weights_only=True)
    torch.save({**d, "version": 0, "package_version": "0.0.1"}, tmp_path / "old_calib.pt")
    with pytest.raises(CheckpointError, match="written by quantface 0.0.1 .*re-run `quantface"):
        CalibrationSet.load(tmp_path / "old_calib.pt")
    BitPlan.uniform(["a"], 4, 4).save(tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == "quantface-plan" and plan["package_version"] == __version__
    (tmp_path / "plan2.json").write_text(json.dumps({**plan, "version": 2}))
    with pytest.raises(CheckpointError, match="plan format 2"):
        BitPlan.load(tmp_path / "plan2.json")


# --- numerics -----------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
DEGENERATE = {
    "nan_and_inf": torch.tensor([[NAN, 1.0, -2.0], [INF, -INF, 0.5]]),
    "all_nan": torch.full((2, 3), NAN),
    "all_zero": torch.zeros(2, 3),
    "constant": torch.full((2, 3), 5.0),
    "constant_channel": torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]),
}


@pytest.mark.parametrize("data", sorted(DEGENERATE))
@pytest.mark.parametrize(
    "kind,granularity",
    [("minmax", "tensor"), ("minmax", "channel"), ("percentile", "tensor"), ("mse", "tensor")]
    + [("mse", "channel")],
)
def test_degenerate_ranges_give_finite_positive_scales(kind, granularity, data):
    from quantface.quant.observers import make_observer
    from quantface.quant.quantizer import QuantSpec, UniformQuantizer

    for symmetric in (False, True):
        spec = QuantSpec(4, symmetric=symmetric, granularity=granularity, channel_dim=0)
        obs = make_observer(kind, spec)
        obs.update(DEGENERATE[data])
        q = UniformQuantizer(spec)
        q.set_range(*obs.compute())
        assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
        assert torch.isfinite(q.zero_point).all()
        assert torch.isfinite(q(torch.ones(2, 3))).all()
        dynamic = UniformQuantizer(QuantSpec(4, granularity="token", dynamic=True))
        x = DEGENERATE[data].nan_to_num(0.0, 0.0, 0.0)
        assert torch.isfinite(dynamic(x)).all()


def test_calibration_statistics_ignore_nan_and_inf():
    from quantface.quant.calibration import StatsObserver

    obs = StatsObserver(channel_dim=-1, sample_rows=8, seed=0)
    obs.update(DEGENERATE["nan_and_inf"])
    stats = obs.result()
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert stats["max"].item() == 1.0 and stats["min"].item() == -2.0


@pytest.mark.parametrize("method", ["maxmin", "smoothquant", "quarot", "svdquant"])
def test_all_zero_calibration_images_give_a_finite_model(method, micro_model):
    from quantface.quant.calibration import collect_calibration
    from quantface.quant.plan import BitPlan

    black = torch.zeros(2, 3, 32, 32)
    calib = collect_calibration(copy.deepcopy(micro_model), black, 2, 16)
    plan = BitPlan.uniform(micro_model.quant_targets(), 4, 4)
    q = quantize_bundle(method, micro_model, calib, plan, {}).model
    for name, t in q.state_dict().items():
        assert torch.isfinite(t).all(), name
        if name.endswith(".scale"):
            assert (t > 0).all(), name
    assert torch.isfinite(q.restore(torch.rand(1, 3, 32, 32))).all()


def test_a_diverging_method_stops_and_writes_nothing(micro_model, tmp_path, capsys):
    """QuantFace with lr 1e12 through method_options: a NumericsError, not a NaN model.

    (tests/test_distill.py proves the same for the shared distillation loop with NaN targets.)
    """
    from quantface.models.checkpoint import save_bundle
    from quantface.quant.calibration import collect_calibration

    save_bundle(micro_model, tmp_path / "fp.pt")
    calib = collect_calibration(copy.deepcopy(micro_model), torch.rand(2, 3, 32, 32), 2, 16)
    calib.record_model(tmp_path / "fp.pt")
    calib.save(tmp_path / "calib.pt")
    opts = {"steps": 4, "lr": 1e12, "scale_lr": 1e12, "crop": 16, "batch_size": 2}
    argv = ["quantize", "--model", str(tmp_path / "fp.pt"), "--method", "quantface"]
    argv += ["--bits", "w4a4", "--calib", str(tmp_path / "calib.pt"), "--out"]
    argv += [str(tmp_path / "q"), "--options", json.dumps(opts)]
    assert main(argv) == 2
    line = _one_error_line(capsys, "quantize")
    assert "quantface w4a4: distillation diverged at step" in line
    assert "lower the learning rate" in line
    assert not (tmp_path / "q").exists() or not list((tmp_path / "q").iterdir())


# --- safety -------------------------------------------------------------------------------------
SOURCES = sorted(
    p
    for d in ("quantface", "baselines", "benchmarks", "workflow")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".smk")
)


def test_every_loader_in_the_repo_refuses_pickled_code():
    """torch.load only with weights_only=True; no pickle, no unsafe yaml, no allow_pickle."""
    import re

    for path in SOURCES:
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"pickle\.(loads?|Unpickler)\(", text), path
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"yaml\.(unsafe_)?load\(", text), path


def test_metric_weights_that_need_a_full_unpickler_are_refused(tmp_path, capsys, monkeypatch):
    """pyiqa loads its weights with weights_only=False: our safe check runs first."""
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "weights"
    for f in ("hub/checkpoints/alexnet-owt-7be5be79.pth", "hub/pyiqa/LPIPS_v0.1_alex-df73285e.pth"):
        (weights / f).parent.mkdir(parents=True, exist_ok=True)
        (weights / f).write_bytes(pickle.dumps({"w": _RunsCode()}))
    pred = tmp_path / "pred"
    pred.mkdir()
    write_image(pred / "a.png", FACE)
    argv = ["evaluate", "--pred", str(pred), "--ref", str(pred), "--metrics", "lpips"]
    argv += ["--out", str(tmp_path / "m.csv"), "--weights-dir", str(weights)]
    assert main(argv) == 2
    line = _one_error_line(capsys, "evaluate")
    assert "refusing to load" in line and "alexnet-owt-7be5be79.pth" in line
    assert not (tmp_path / "PICKLE_RAN").exists()


def test_plain_weight_files_and_torchscript_pass_the_safe_check(tmp_path):
    from quantface.io import check_plain_weights

    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    for name in ("plain.pth", "scripted.pt"):
        check_plain_weights(tmp_path / name)
