"""The micro study on a real one-node SLURM cluster gives the same tables as a local run.

Marked `cluster`, so the default `pytest` skips it; run it (as root, it starts daemons) with
    python -m pytest -m cluster tests/cluster -s
The fixture starts the cluster with tests/cluster/slurm_up.sh (installing Debian's slurm-wlm and
munge if absent) and, if it was not already running, stops it again with slurm_down.sh. The
workflow goes through the checked-in profile `workflow/profiles/slurm` exactly as a user would;
only the placeholders and the test cluster's status settings are supplied on the command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
MICRO = ROOT / "config" / "micro.yaml"


def _cluster_up(env: dict[str, str]) -> bool:
    r = subprocess.run(
        ["sinfo", "-h", "-o", "%t"], check=False, env=env, capture_output=True, text=True
    )
    return r.returncode == 0 and r.stdout.strip().startswith(("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root")
    env = dict(os.environ)  # slurm_up.sh links its config to /etc/slurm/slurm.conf
    was_up = _cluster_up(env)
    subprocess.run([str(HERE / "slurm_up.sh")], check=True, env=env, timeout=900)
    yield env
    if not was_up:
        subprocess.run([str(HERE / "slurm_down.sh")], check=False, env=env, timeout=120)


def _snakemake(workdir: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(MICRO),
        *args,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800)
    elapsed = time.perf_counter() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    return elapsed, out


def _job_total(log: str) -> int:
    """The 'total N' line of Snakemake's job statistics."""
    return int(re.findall(r"^total\s+(\d+)", log, re.MULTILINE)[0])


def test_micro_study_on_slurm_matches_local_run(tmp_path, slurm_env):
    env = {**slurm_env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    local_s, local_log = _snakemake(tmp_path / "local", env, "--cores", "2")

    cluster_env = {
        **env,
        "QUANTFACE_SLURM_PARTITION": "debug",  # the profile's placeholders
        "QUANTFACE_SLURM_ACCOUNT": "",  # no accounting on the test cluster
    }
    work = tmp_path / "slurm"
    cluster_s, cluster_log = _snakemake(
        work,
        cluster_env,
        "--profile",
        str(ROOT / "workflow" / "profiles" / "slurm"),
        # no slurmdbd here: squeue status (MinJobAge=600 keeps finished jobs visible), polled
        # often because the micro jobs take seconds
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--slurm-logdir",
        str(work / "slurm_logs"),
    )
    submitted = len(re.findall(r"has been submitted with SLURM jobid", cluster_log))
    print(
        f"\nlocal: {local_s:.0f} s, {_job_total(local_log)} jobs; "
        f"SLURM: {cluster_s:.0f} s, {_job_total(cluster_log)} jobs "
        f"({submitted} submitted to SLURM, the rest localrules)"
    )
    assert submitted > 0 and submitted < _job_total(cluster_log)  # localrules stayed local

    a, b = tmp_path / "local" / "results", work / "results"
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    tables = sorted(p.name for p in (a / "tables").iterdir())
    assert tables == sorted(p.name for p in (b / "tables").iterdir())
    for name in tables:
        if name.startswith("cost."):
            continue  # the cost table carries measured calibration seconds
        assert (a / "tables" / name).read_text() == (b / "tables" / name).read_text(), name
    cost_a, cost_b = (
        pd.read_csv(d / "tables" / "cost.csv").filter(regex=r"^(?!Calibration)") for d in (a, b)
    )
    pd.testing.assert_frame_equal(cost_a, cost_b)
