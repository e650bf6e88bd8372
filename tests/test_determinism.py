"""Same config and seed, same numbers: the micro study's MaxMin cells rerun from scratch on one
core give byte-identical scores and identical trained and quantized models to the shared
two-core run (`micro_study`, conftest.py).

The rerun builds only what those cells need (data, training, calibration, two quantizations,
restores, scores): every job is a fresh process, so ~10 s of imports each, and reusing the
two-core run saves a whole DAG run.

What keeps it so (checked here, not assumed): every job gets its seed from (seed, wildcards)
(common.smk `job_seed`); torch runs a fixed number of intra-op threads per job (`--threads`,
never Snakemake's `{threads}`, which shrinks with `--cores`), so reductions split the same way
in both runs; global RNGs are seeded (`cli._setup`); the MIP solver uses one thread; every folder
listing is sorted. No nondeterministic op was found on CPU.
"""

import pytest
import torch

from tests.test_workflow import snakemake

CELLS = ["tiny/maxmin/w4a4"]  # one cell: a second adds two jobs and no new kind of step


@pytest.mark.slow
@pytest.mark.xdist_group("micro_study")  # one worker builds the shared run once
def test_a_one_core_rerun_gives_byte_identical_scores_and_models(micro_study, tmp_path):
    targets = [f"results/{cell}/synthetic_faces/metrics.csv" for cell in CELLS]
    r = snakemake(tmp_path, *targets, cores=1)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = micro_study / "results", tmp_path / "results"
    for cell in CELLS:
        scores = f"{cell}/synthetic_faces/metrics.csv"
        assert (a / scores).read_bytes() == (b / scores).read_bytes(), scores
        assert len((b / scores).read_text().splitlines()) > 3
    for model in ["tiny/fp/model.pt"] + [f"{cell}/model.pt" for cell in CELLS]:
        x, y = (torch.load(r / model, weights_only=True) for r in (a, b))
        assert x["state_dict"].keys() == y["state_dict"].keys(), model
        assert all(torch.equal(x["state_dict"][k], v) for k, v in y["state_dict"].items()), model
