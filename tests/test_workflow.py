"""The Snakemake DAG end to end on the micro config: dry run, full run, no-op rerun."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from quantface.config import protocol_cells, quantized_cells

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "config" / "micro.yaml"


def snakemake(
    workdir: Path, *args: str, config: Path = MICRO, cores: int = 2
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        str(cores),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)


def test_dry_run_of_the_default_config_lists_every_job(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cells = len(quantized_cells(config["methods"], config["bits"]))  # mp4: MP methods only
    cells += len(protocol_cells(config))  # the matched protocol's cells, beside the native ones
    variants = yaml.safe_load((ROOT / "config" / "ablation.yaml").read_text())["ablation"]
    n_variants = len(variants["variants"])
    # one restore-and-score job per model: every test set in one process, not one per set
    for configs, quantize, ablation in [
        ([ROOT / "config" / "config.yaml"], cells, 0),
        (  # the ablation overlay: one more job per variant (restored on the synthetic set only)
            [ROOT / "config" / "config.yaml", ROOT / "config" / "ablation.yaml"],
            cells + n_variants,
            n_variants,
        ),
    ]:
        r = snakemake(tmp_path, "-n", "--configfile", *map(str, configs))
        assert r.returncode == 0, r.stderr
        out = r.stdout + r.stderr
        for rule, count in [
            ("prepare_data", 2),
            ("prepare_model", 1),
            ("calibrate", 1),
            ("quantize", quantize),
            ("evaluate_input", 1),
            ("restore_evaluate_fp", 1),
            ("restore_evaluate", cells),  # protocol cells are restored on every set too
            ("restore_evaluate_ablation", ablation),
            ("tables", 1),
            ("figures", 1),
        ]:
            listed = any(line.split() == [rule, str(count)] for line in out.splitlines())
            assert listed or (count == 0 and rule not in out), (rule, count)


def test_default_run_draws_the_activation_distribution_after_balancing(tmp_path):
    """The figure's second row is part of the DAG: the figures job reads the balanced
    statistics, which one calibrate_balanced job measures from the FP calibration."""
    r = snakemake(tmp_path, "-n", "-p")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (r.stdout + r.stderr).splitlines()
    model = yaml.safe_load(MICRO.read_text())["model"]["name"]
    balanced = f"results/{model}/calib/activations_balanced.pt"
    i = lines.index("rule figures:")
    inputs = next(x for x in lines[i:] if x.strip().startswith("input:"))
    assert balanced in inputs.split(":", 1)[1].replace(",", " ").split()
    assert any(x.split() == ["calibrate_balanced", "1"] for x in lines)
    figures = next(x for x in lines if "quantface figures" in x)
    assert f"--calib-after {balanced}" in figures


def test_bad_config_stops_before_any_job_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MICRO.read_text().replace("bits: [w8a8, w4a4]", "bits: [w8a8, w4a]"))
    r = snakemake(tmp_path, "-n", config=bad)
    assert r.returncode == 2
    assert "'bits'" in r.stderr and "w4a" in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("micro_study")  # one worker builds the shared run once
def test_micro_study_runs_end_to_end_and_reruns_nothing(micro_study):
    tmp_path = micro_study
    res = tmp_path / "results"
    for f in [
        "metrics.csv",
        "cost.csv",
        "tables/table1_synthetic.md",
        "tables/table1_synthetic.tex",
        "tables/table1_synthetic.html",
        "tables/table3_realworld.csv",
        "tables/cost.md",
        "figures/quality_vs_bits_synthetic_faces.png",
        "figures/qualitative_synthetic_faces.png",
        "figures/quality_vs_cost_synthetic_faces.png",
        "figures/activation_distribution.png",
        "tiny/calib/activations_balanced.pt",
    ]:
        assert (res / f).is_file(), f
    df = pd.read_csv(res / "metrics.csv")
    assert set(df["method"]) == {"input", "fp", "maxmin"}
    assert set(df[df["method"] == "maxmin"]["bits"]) == {"w8a8", "w4a4"}
    syn = df[(df["dataset"] == "synthetic_faces") & (df["metric"] == "psnr_fp")]
    by_bits = dict(zip(syn["bits"], syn["value"]))
    assert by_bits["w8a8"] > by_bits["w4a4"]  # more bits, closer to FP
    assert not list(res.rglob("*.tmp"))  # no half-written file anywhere
    again = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # the HTML report renders offline, with every table and figure and their captions
    r = snakemake(tmp_path, "--report", "results/report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    html = (res / "report.html").read_text()
    for name in [
        "table1_synthetic.md",
        "cost.tex",
        "quality_vs_cost_synthetic_faces.png",
        "activation_distribution.png",
        "qualitative_synthetic_faces.png",
    ]:
        assert name in html, name
    assert "Pareto front" in html  # a caption from workflow/report/
    assert not re.search(r'(src|href)="https?://', html)  # nothing fetched when opened
    # every table is also an HTML result, which the report shows as a page: a real <table>
    uris = re.findall(r"data:text/html;charset=utf8;filename=([^;]+);base64,([^\"']+)", html)
    pages = {name: base64.b64decode(data).decode() for name, data in uris}
    assert {"table1_synthetic.html", "table3_realworld.html", "cost.html"} <= set(pages)
    assert all("<table>" in page and "<td>" in page for page in pages.values())
    # the landing page says what the study is, filled from the config, and links the main result
    landing = json.loads(re.search(r'var workflow_desc = (".*?(?<!\\)");', html).group(1))
    config = yaml.safe_load(MICRO.read_text())
    text = re.sub(r"<[^>]+>", "", landing)
    assert f"quantization of the {config['model']['name']} face restorer" in text
    assert f"Global seed {config['seed']}" in text and "W8A8, W4A4" in text
    for name, opts in config["data"]["datasets"].items():
        assert f"{name}: {opts['n_images']} images" in text, name
    assert "showResultInfo('results/tables/table1_synthetic.html')" in landing
    # tables are a pure function of metrics.csv: regenerate them from it alone
    shutil.rmtree(res / "tables")
    r = snakemake(tmp_path, "--forcerun", "tables")
    assert r.returncode == 0 and (res / "tables" / "table1_synthetic.md").is_file()


def test_empty_no_reference_list_runs_the_unpaired_evaluations(tmp_path):
    """`metrics.no_reference: []` leaves an unpaired dataset's fp/input evaluations without any
    metric: the job's test sets carry an empty metric list (not a missing argument) and the job
    writes a header-only metrics.csv that aggregation reads."""
    import shlex

    from quantface.cli import main
    from quantface.registry import DATASETS
    from quantface.report.aggregate import aggregate_metrics

    cfg = tmp_path / "no_reference.yaml"
    cfg.write_text(MICRO.read_text().replace("no_reference: [piqe]", "no_reference: []"))
    assert "no_reference: []" in cfg.read_text()
    r = snakemake(tmp_path, "-n", "-p", config=cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr

    def sets(method: str) -> dict:
        lines = [x for x in out.splitlines() if "restore-evaluate" in x and "--sets" in x]
        for line in lines:
            args = shlex.split(line[line.index("quantface") :])
            if args[args.index("--method") + 1] == method:
                entries = json.loads(args[args.index("--sets") + 1])
                return {e["dataset"]: e["metrics"] for e in entries}
        raise AssertionError(f"no restore-evaluate job for {method}:\n" + "\n".join(lines)[-3000:])

    for method in ("input", "fp"):
        assert sets(method)["realworld_embedded"] == [], method
    assert sets("maxmin")["realworld_embedded"] == ["psnr_fp"]

    data = tmp_path / "rw"
    DATASETS.get("realworld_embedded")().prepare(data, {"n_images": 2, "image_size": 32}, seed=0)
    empty = tmp_path / "empty.csv"
    argv = ["evaluate", "--pred", str(data / "lq"), "--metrics=", "--out", str(empty)]
    argv += ["--manifest", str(data / "manifest.json"), "--method", "fp", "--bits", "fp32"]
    argv += ["--dataset", "realworld_embedded", "--model-name", "tiny"]
    assert main(argv) == 0
    df = pd.read_csv(empty)
    assert df.empty and "metric" in df.columns
    scored = tmp_path / "piqe.csv"
    argv[argv.index("--metrics=")] = "--metrics=piqe"
    argv[argv.index(str(empty))] = str(scored)
    assert main(argv) == 0
    merged = aggregate_metrics([empty, scored], tmp_path / "metrics.csv")
    assert list(merged["metric"]) == ["piqe"]


def test_seeds_repeat_calibration_and_every_native_cell_with_their_own_seed(tmp_path):
    from quantface.config import job_seed

    config = yaml.safe_load(MICRO.read_text())
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(f"seeds: [{config['seed']}, 5]\n")
    r = snakemake(tmp_path, "-n", "--configfile", str(MICRO), str(overlay))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    cells = quantized_cells(config["methods"], config["bits"])
    for rule, count in [("calibrate", 1), ("calibrate_seed", 1), ("quantize", 2 * len(cells))]:
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), rule
    model = config["model"]["name"]
    for method, bits in cells:
        seeded = f"results/{model}/seed5/{method}/{bits}"
        command = next(line for line in out.splitlines() if f"--out {seeded} " in line)
        assert f"--calib results/{model}/seed5/calib/activations.pt" in command
        assert f"--seed {job_seed(5, 'quantize', model, method, bits)} " in command
    assert "results/tables/seeds.md" in out
