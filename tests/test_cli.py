"""The `quantface` CLI on a micro model: every subcommand a rule calls, and its error contract."""

import argparse
import json
import subprocess
import sys

import pandas as pd
import pytest

from quantface.cli import build_parser, main
from tests.conftest import MICRO_ARCH

TRAIN = {
    "vae_steps": 3,
    "latent_steps": 3,
    "pixel_steps": 2,
    "pool_size": 4,
    "batch_size": 2,
    "crop": 16,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Train, calibrate and prepare data once for all tests of this module."""
    d = tmp_path_factory.mktemp("cli")
    opts = json.dumps({"arch": MICRO_ARCH, "train": TRAIN})
    assert main(["train", "--out", str(d / "fp.pt"), "--options", opts, "--seed", "1"]) == 0
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(d / "fp.pt"),
                "--out",
                str(d / "calib.pt"),
                "--n-images",
                "4",
                "--batch-size",
                "2",
                "--sample-rows",
                "32",
            ]
        )
        == 0
    )
    data_opts = json.dumps({"n_images": 3, "image_size": 32})
    assert (
        main(
            [
                "prepare-data",
                "--dataset",
                "synthetic_faces",
                "--out",
                str(d / "syn"),
                "--options",
                data_opts,
            ]
        )
        == 0
    )
    return d


def test_quantize_restore_evaluate(workdir):
    d = workdir
    assert (
        main(
            [
                "quantize",
                "--model",
                str(d / "fp.pt"),
                "--method",
                "maxmin",
                "--bits",
                "w4a6",
                "--calib",
                str(d / "calib.pt"),
                "--out",
                str(d / "q"),
            ]
        )
        == 0
    )
    plan = json.loads((d / "q" / "plan.json").read_text())["layers"]
    assert {(v["w_bits"], v["a_bits"]) for v in plan.values()} <= {(4, 6), (6, 6)}
    cost = json.loads((d / "q" / "cost.json").read_text())
    assert 0.5 < cost["total"]["param_bits_reduction"] < 1
    for model, out in (("fp.pt", "fp_out"), ("q/model.pt", "q_out")):
        assert (
            main(
                [
                    "restore",
                    "--model",
                    str(d / model),
                    "--input",
                    str(d / "syn" / "lq"),
                    "--output",
                    str(d / out),
                    "--batch-size",
                    "2",
                ]
            )
            == 0
        )
        assert len(list((d / out).glob("*.png"))) == 3
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(d / "q_out"),
                "--ref",
                str(d / "syn" / "hq"),
                "--fp",
                str(d / "fp_out"),
                "--metrics",
                "psnr,ssim,piqe,psnr_fp,lpips",
                "--out",
                str(d / "m.csv"),
                "--weights-dir",
                str(d / "weights"),
                "--method",
                "maxmin",
                "--bits",
                "w4a6",
                "--dataset",
                "syn",
            ]
        )
        == 0
    )
    df = pd.read_csv(d / "m.csv").set_index("metric")
    assert df.loc["psnr", "value"] > 5 and df.loc["psnr", "w_bits"] == 4
    assert df.loc["psnr", "a_bits"] == 6 and df.loc["psnr", "n_images"] == 3
    assert pd.isna(df.loc["lpips", "value"])
    assert "weights absent" in df.loc["lpips", "note"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["quantize", "--method", "maxmin", "--bits", "w4a"], "w4a"),
        (["quantize", "--method", "nosuch", "--bits", "w4a4"], "unknown method 'nosuch'"),
        (["restore", "--input", "MISSING_DIR"], "MISSING_DIR"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(workdir, argv, needle, capsys):
    d = workdir
    paths = {
        "quantize": [
            "--model",
            str(d / "fp.pt"),
            "--calib",
            str(d / "calib.pt"),
            "--out",
            str(d / "x"),
        ],
        "restore": ["--model", str(d / "fp.pt"), "--output", str(d / "y")],
    }
    assert main(argv + paths[argv[0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith(f"quantface {argv[0]}: error:")


def _restore(model, input_dir, output_dir) -> int:
    return main(
        ["restore", "--model", str(model), "--input", str(input_dir), "--output", str(output_dir)]
    )


def test_missing_model_file_is_named(tmp_path, capsys):
    assert _restore(tmp_path / "nope.pt", tmp_path, tmp_path / "o") == 2
    assert "nope.pt" in capsys.readouterr().err


def test_corrupt_image_in_input_folder_is_named(workdir, tmp_path, capsys):
    src = workdir / "syn" / "lq"
    folder = tmp_path / "in"
    folder.mkdir()
    for p in src.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "00001.png").write_bytes(b"not a png")
    assert _restore(workdir / "fp.pt", folder, tmp_path / "out") == 2
    assert "00001.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_registry_listings():
    out = subprocess.run(
        [sys.executable, "-m", "quantface.cli", "methods"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "maxmin" in out and "fp" in out


def test_restore_refuses_a_prepared_set_with_a_missing_image(workdir, tmp_path, capsys):
    import shutil

    data = tmp_path / "syn"
    shutil.copytree(workdir / "syn", data)
    (data / "lq" / "00002.png").unlink()
    assert _restore(workdir / "fp.pt", data / "lq", tmp_path / "out") == 2
    assert "00002.png" in capsys.readouterr().err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {"quantface": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({f"quantface {n}": sp for n, sp in action.choices.items()})
    return found


def test_every_option_has_help_and_its_help_shows_the_default():
    """`--help` is the reference for every flag a rule passes: each says what it is and what a
    run without it does."""
    for name, parser in _subparsers(build_parser()).items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.option_strings)
            d = action.default
            if (
                d is None
                or d is False
                or d == argparse.SUPPRESS
                or (isinstance(d, str | list) and not d)
            ):
                continue  # nothing to show: required, an off switch, an empty list or label
            help_text = " ".join(action.help.split())
            shown = f"(default: {d})" in text or "default" in help_text
            assert shown, (name, action.option_strings, d)
    calibrate = " ".join(_subparsers(build_parser())["quantface calibrate"].format_help().split())
    assert "calibration images (default: 32)" in calibrate
