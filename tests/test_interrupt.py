"""A writer killed mid-write leaves no output and no debris once rerun, and the rerun gives the
same result as a run that was never interrupted."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _killed_writer(target, kind):
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from quantface.io import atomic_dir, atomic_path
        target = Path({str(target)!r})
        if {kind!r} == "file":
            with atomic_path(target) as tmp:
                tmp.write_text("half of the")
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            with atomic_dir(target) as tmp:
                (tmp / "a.png").write_text("first image")
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False)
    assert r.returncode == -9


def test_sigkilled_file_write_leaves_nothing_and_rerun_cleans_up(tmp_path):
    from quantface.io import atomic_write_text

    target = tmp_path / "metrics.csv"
    _killed_writer(target, "file")
    assert not target.exists()
    atomic_write_text(target, "complete")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_sigkilled_folder_write_keeps_the_old_folder(tmp_path):
    from quantface.io import atomic_dir

    target = tmp_path / "images"
    with atomic_dir(target) as tmp:
        (tmp / "old.png").write_text("finished earlier")
    _killed_writer(target, "dir")
    assert list_images_and_files(target) == ["old.png"]
    with atomic_dir(target) as tmp:
        (tmp / "new.png").write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["images"]
    assert list_images_and_files(target) == ["new.png"]


def list_images_and_files(folder: Path) -> list[str]:
    """A folder's entries without the suite's record of what it wrote there."""
    from quantface.io import OWNED

    return sorted(p.name for p in folder.iterdir() if p.name != OWNED)


# --- a real `quantface` CLI process killed while writing its outputs ----------------------------
# The child runs the CLI's own `main`; the only change is that renaming the named output into
# place first announces itself and waits, so the test can kill it at exactly that moment (every
# temp file written, nothing renamed yet).
PAUSED_CLI = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    real_replace = os.replace
    def announced_replace(src, dst):
        if Path(dst).name == os.environ["PAUSE_BEFORE_RENAMING"]:
            print("WRITING", flush=True)
            time.sleep(600)
        real_replace(src, dst)
    os.replace = announced_replace
    from quantface.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _kill_while_writing(argv: list[str], output_name: str, sig: int) -> None:
    env = {**os.environ, "PAUSE_BEFORE_RENAMING": output_name, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()[-2000:]
        proc.send_signal(sig)
        assert proc.wait(timeout=60) in (-sig, 128 + sig)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def micro_files(micro_model, micro_images, tmp_path):
    from quantface.models.checkpoint import save_bundle
    from quantface.quant.calibration import collect_calibration
    from quantface.registry import DATASETS

    save_bundle(micro_model, tmp_path / "fp.pt")
    calib = collect_calibration(copy.deepcopy(micro_model), micro_images, 2, 32)
    calib.record_model(tmp_path / "fp.pt")
    calib.save(tmp_path / "calib.pt")
    DATASETS.get("synthetic_faces")().prepare(
        tmp_path / "syn", {"n_images": 3, "image_size": 32}, seed=0
    )
    return tmp_path


def test_sigkilled_quantize_leaves_no_output_and_rerun_matches(micro_files):
    from quantface.cli import main

    d = micro_files

    def argv(out: str) -> list[str]:
        return ["quantize", "--model", str(d / "fp.pt"), "--method", "smoothquant"] + [
            "--bits",
            "w4a4",
            "--calib",
            str(d / "calib.pt"),
            "--out",
            str(d / out),
            "--seed",
            "5",
        ]

    assert main(argv("reference")) == 0
    _kill_while_writing(argv("q"), "plan.json", signal.SIGKILL)
    assert not [p for p in (d / "q").iterdir() if not p.name.endswith(".tmp")]  # no output
    assert _temps(d / "q")  # SIGKILL skips all cleanup: temp files stay until the rerun
    assert main(argv("q")) == 0
    assert _temps(d / "q") == []
    assert sorted(p.name for p in (d / "q").iterdir()) == ["cost.json", "model.pt", "plan.json"]
    assert (d / "q" / "plan.json").read_text() == (d / "reference" / "plan.json").read_text()
    costs = [json.loads((d / f / "cost.json").read_text()) for f in ("q", "reference")]
    for c in costs:
        c.pop("calibration_seconds")
    assert costs[0] == costs[1]
    import torch

    got, want = (torch.load(d / f / "model.pt", weights_only=True) for f in ("q", "reference"))
    assert got["state_dict"].keys() == want["state_dict"].keys()
    assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())


def test_sigtermed_evaluate_cleans_up_and_rerun_matches(micro_files):
    from quantface.cli import main

    d = micro_files

    def argv(out: str) -> list[str]:
        return ["evaluate", "--pred", str(d / "syn" / "lq"), "--ref", str(d / "syn" / "hq")] + [
            "--metrics",
            "psnr,ssim,piqe",
            "--out",
            str(d / out),
            "--manifest",
            str(d / "syn" / "manifest.json"),
            "--dataset",
            "syn",
            "--seed",
            "5",
        ]

    assert main(argv("reference.csv")) == 0
    _kill_while_writing(argv("metrics.csv"), "metrics.csv", signal.SIGTERM)
    assert not (d / "metrics.csv").exists()
    assert _temps(d) == []  # SIGTERM unwinds: the CLI removed its own temp file
    assert main(argv("metrics.csv")) == 0
    assert (d / "metrics.csv").read_bytes() == (d / "reference.csv").read_bytes()


# --- the main `snakemake` process killed ---------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_plain_rerun_after_the_main_snakemake_process_is_killed(tmp_path, sig):
    """The scheduler killed, not a job. After SIGKILL its job outlives it and writes its output,
    which Snakemake then holds as incomplete: a plain rerun must redo that job, not stop with
    IncompleteFilesException, so the workflow profile (profiles/default, rerun-incomplete) must
    be found beside the Snakefile. SIGKILL also leaves Snakemake's lock (it cannot tell a dead
    owner from a live one): `snakemake --unlock` first, as its message says. SIGTERM (Ctrl-C,
    scancel) and SIGHUP (a closed terminal) stop cleanly: the plain rerun is enough."""
    import time

    from tests.test_workflow import MICRO, snakemake

    target = "results/data/synthetic_faces/manifest.json"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(tmp_path), "--configfile", str(MICRO), "--cores", "1", target]
    main = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    incomplete = tmp_path / ".snakemake" / "incomplete"
    # The job's shell opens its log (`2> {log}`) once it runs: the incomplete marker alone is
    # written before the job is spawned, and a kill between the two leaves no job to orphan.
    log = tmp_path / "results" / "logs" / "prepare_data" / "synthetic_faces.log"
    deadline = time.monotonic() + 300
    while not (incomplete.is_dir() and any(incomplete.iterdir()) and log.exists()):
        assert main.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    main.send_signal(sig)
    main.wait()
    if sig == signal.SIGKILL:
        while not (tmp_path / target).exists():  # the orphaned job finishes on its own
            assert time.monotonic() < deadline, "the orphaned job never finished"
            time.sleep(0.2)
        assert any(incomplete.iterdir())  # its output is marked incomplete
        assert snakemake(tmp_path, "--unlock").returncode == 0
    r = snakemake(tmp_path, target, cores=1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IncompleteFilesException" not in r.stderr
    assert json.loads((tmp_path / target).read_text())["n_images"] == 3
