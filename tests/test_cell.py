"""One process restores and scores every test set of a model (the workflow's per-model job)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from quantface.cli import main


@pytest.fixture
def study(micro_model, tmp_path):
    from quantface.models.checkpoint import save_bundle
    from quantface.registry import DATASETS

    save_bundle(micro_model, tmp_path / "fp.pt")
    for name, n in (("synthetic_faces", 3), ("realworld_embedded", 2)):
        DATASETS.get(name)().prepare(tmp_path / name, {"n_images": n, "image_size": 32}, seed=1)
    return tmp_path


def _sets(d, cell, restore=True, fp=False):
    out = []
    for name, paired in (("synthetic_faces", True), ("realworld_embedded", False)):
        entry = {
            "dataset": name,
            "lq": str(d / name / "lq"),
            "manifest": str(d / name / "manifest.json"),
            "metrics_out": str(d / cell / name / "metrics.csv"),
            "metrics": (["psnr"] if paired else []) + ["piqe"] + (["psnr_fp"] if fp else []),
            "hq": str(d / name / "hq") if paired else None,
        }
        if restore:
            entry["images"] = str(d / cell / name / "images")
        if fp:
            entry["fp"] = str(d / "fp" / name / "images")
        out.append(entry)
    return json.dumps(out)


def test_every_set_gets_its_images_and_metrics_from_one_model_load(study, monkeypatch):
    import quantface.restore
    from quantface.models import checkpoint

    loads = []
    real = checkpoint.load_bundle

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_bundle", counted)
    monkeypatch.setattr(quantface.restore, "load_bundle", counted)
    common = ["--weights-dir", str(study / "w"), "--model-name", "tiny", "--batch-size", "2"]
    argv = ["restore-evaluate", "--model", str(study / "fp.pt"), "--method", "fp", "--bits", "fp32"]
    assert main([*argv, "--sets", _sets(study, "fp"), *common]) == 0
    assert len(loads) == 1  # one load for both sets
    for name, n, metrics in (
        ("synthetic_faces", 3, {"psnr", "piqe"}),
        ("realworld_embedded", 2, {"piqe"}),
    ):
        assert len(list((study / "fp" / name / "images").glob("*.png"))) == n
        df = pd.read_csv(study / "fp" / name / "metrics.csv")
        assert set(df["metric"]) == metrics and set(df["dataset"]) == {name}
        assert set(df["method"]) == {"fp"} and (df["n_images"] == n).all()
        scores = pd.read_csv(study / "fp" / name / "metrics_per_image.csv")
        assert scores.groupby("metric")["image"].count().to_dict() == dict.fromkeys(metrics, n)
        means = scores.groupby("metric")["value"].mean()
        assert means.to_dict() == pytest.approx(df.set_index("metric")["value"].to_dict())
    # the fidelity metric of a quantized model reads the FP restorations of the same set
    argv[argv.index("fp") :] = ["q", "--bits", "w8a8"]
    assert main([*argv, "--sets", _sets(study, "q", fp=True), *common]) == 0
    df = pd.read_csv(study / "q" / "synthetic_faces" / "metrics.csv")
    assert df.set_index("metric").loc["psnr_fp", "value"] > 60  # the same model: identical output


def test_without_a_model_the_inputs_are_scored(study):
    argv = [
        "restore-evaluate",
        "--method",
        "input",
        "--bits",
        "-",
        "--weights-dir",
        str(study / "w"),
    ]
    assert main([*argv, "--sets", _sets(study, "input", restore=False)]) == 0
    df = pd.read_csv(study / "input" / "synthetic_faces" / "metrics.csv")
    assert set(df["metric"]) == {"psnr", "piqe"}
    assert not (study / "input" / "synthetic_faces" / "images").exists()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ("not json", "--sets is not JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"lq": "x"}]', "needs dataset"),
    ],
)
def test_a_bad_sets_argument_is_one_line(sets, message, capsys):
    assert main(["restore-evaluate", "--sets", sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
