"""Same config and seed, same numbers: two full DAG runs (`--cores 1` and `--cores 2`) give a
byte-identical results/metrics.csv and identical quantized models.

The micro study (11 jobs: data, training, calibration, SmoothQuant W4A4, restores, scores,
aggregate) stands for the others; every job is a fresh process, so ~10 s of imports each.

What keeps it so (checked here, not assumed): every job gets its seed from (seed, wildcards)
(common.smk `job_seed`); torch runs a fixed number of intra-op threads per job (`--threads`,
never Snakemake's `{threads}`, which shrinks with `--cores`), so reductions split the same way
in both runs; global RNGs are seeded (`cli._setup`); the MIP solver uses one thread; every folder
listing is sorted. No nondeterministic op was found on CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "data" / "micro_config.yaml"


def _run(workdir: Path, config: Path, cores: int) -> None:
    cmd = [sys.executable, "-m", "snakemake", "results/metrics.csv", "--snakefile"]
    cmd += [str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(config)]
    cmd += ["--cores", str(cores)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_two_runs_on_one_and_two_cores_give_identical_metrics(tmp_path):
    config = yaml.safe_load(MICRO.read_text())
    config.update(methods=["smoothquant"], bits=["w4a4"])
    config["data"]["datasets"] = {"synthetic_faces": {"n_images": 3}}
    config["report"].update(synthetic=["synthetic_faces"], realworld=[])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = [tmp_path / "cores1", tmp_path / "cores2"]
    for workdir, cores in zip(runs, (1, 2)):
        _run(workdir, path, cores)
    a, b = (w / "results" for w in runs)
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert len((a / "metrics.csv").read_text().splitlines()) > 10
    x, y = (torch.load(r / "tiny/smoothquant/w4a4/model.pt", weights_only=True) for r in (a, b))
    assert x["state_dict"].keys() == y["state_dict"].keys()
    assert all(torch.equal(x["state_dict"][k], v) for k, v in y["state_dict"].items())
