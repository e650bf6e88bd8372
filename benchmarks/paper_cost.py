"""The bill of the paper study, extrapolated from a measured full-size run (config/scale.yaml).

    PYTHONPATH=. python benchmarks/paper_cost.py [--results results] [--scale config/scale.yaml]
        [--paper config/paper.yaml]

Why: `config/paper.yaml` is 25 quantize jobs of an 865M-parameter UNet (20k AdaRound iterations
per block for Q-Diffusion, 16k distillation steps for EfficientDM) and 26 restorations of 6,088
test images; nobody should book a cluster on a guess. The scale run executes every stage of every
method at the real shapes with one iteration or so per loop, and each loop logs
`timing stage=... n=... seconds=...` (quantface/timing.py). Per stage, seconds / n is the cost of
one unit (a step, an iteration, an image, a sensitivity measurement); the paper study's units
follow from its config. Everything else a quantize job does (loading, deep copies, balancing,
SVDs, weight range searches, the ILP, cost counting, writing) is fixed cost, taken as measured.

Assumptions, all printed with the table:
  - a distillation step costs in proportion to its batch size (the scale run uses batch 1);
  - a bit setting costs what the measured one (W4A4 / mp4) cost: fake-quant simulation does the
    same float work at any width, so w6a6 and w4a6 jobs are billed like the w4a4 job;
  - Q-Diffusion's per-unit capture and iteration costs are averaged over the units measured
    (`max_units`: an evenly spaced subset) and billed for every unit, an iteration in
    proportion to its batch size, a capture to the calibration images;
  - SVDQuant's smoothing search is billed per (layer, candidate), its branch refit per (layer,
    iterate) at the paper's `lowrank_iters` for every layer: an upper bound, as the refit stops
    early at the first iterate worse than the best;
  - evaluation is not billed: the paper's metrics (LPIPS, DISTS, FID, CLIP-IQA, MUSIQ, MANIQA,
    identity) need weights this run did not have, so their cost was not measured.

Figures are for the device the run was measured on (the jobs' `device:` log line). A CPU figure
is never a GPU figure: the GPU columns stay "not measured" unless the logs say cuda.
Peak memory is the largest `max_rss` of the method's jobs in the scale run's benchmark files
(resident host memory; it is not GPU memory, and stages whose memory grows with the number of
calibration images, e.g. Q-Diffusion's cached block inputs, may need more at paper size).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantface.config import merge_configs, quantized_cells
from quantface.timing import LINE

PAPER_IMAGES = {"celeba_test": 3000, "lfw_test": 1711, "webphoto_test": 407, "wider_test": 970}
DEVICE = re.compile(r"INFO quantface: device: (\S+)")
# quantize options that set a loop's length, per method: option -> defaults of the method
LOOP_DEFAULTS: dict[str, dict[str, Any]] = {
    "qdiffusion": {"w_iters": 60, "a_iters": 30, "n_samples": 16, "batch_size": 4},
    "svdquant": {"num_grids": 10, "lowrank_iters": 10},
    "passionsr": {"let_steps": 40, "lbq_steps": 40, "batch_size": 4},
    "efficientdm": {"steps": 80, "batch_size": 4},
    "quantface": {"steps": 80, "batch_size": 4, "crops_per_image": 2},
    "quantface_mp": {
        "steps": 80,
        "batch_size": 4,
        "crops_per_image": 2,
        "sensitivity_images": 2,
        "candidates": [3, 4, 5, 6],
    },
}


@dataclass
class Job:
    """One measured job: benchmark TSV seconds and max RSS, plus its timing lines and device."""

    seconds: float = 0.0
    max_rss_mib: float = 0.0
    cpu_seconds: float = 0.0
    device: str = ""
    stages: dict[str, tuple[int, float]] = field(default_factory=dict)  # stage -> (n, seconds)


def read_tsv(path: Path) -> tuple[float, float, float]:
    """(wall seconds, max RSS MiB, CPU seconds) of a Snakemake benchmark file."""
    with path.open() as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return float(row["s"]), float(row["max_rss"]), float(row["cpu_time"])


def read_log(path: Path, job: Job) -> None:
    """Sum the timing lines per stage (Q-Diffusion logs one per block) and find the device."""
    if not path.is_file():
        return
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for line in path.read_text(errors="replace").splitlines():
        if m := DEVICE.search(line):
            job.device = m[1]
        if m := LINE.search(line):
            sums[m["stage"]][0] += int(m["n"])
            sums[m["stage"]][1] += float(m["s"])
    job.stages = {k: (int(n), s) for k, (n, s) in sums.items()}


def load_job(results: Path, rule: str, parts: str) -> Job | None:
    """The job under results/benchmarks/<rule>/<parts>.tsv and results/logs/<rule>/<parts>.log."""
    tsv = results / "benchmarks" / rule / f"{parts}.tsv"
    log = results / "logs" / rule / f"{parts}.log"
    if not tsv.is_file() and not log.is_file():
        return None
    job = Job()
    if tsv.is_file():
        job.seconds, job.max_rss_mib, job.cpu_seconds = read_tsv(tsv)
    read_log(log, job)
    return job


def options(config: dict[str, Any], method: str) -> dict[str, Any]:
    return {**LOOP_DEFAULTS.get(method, {}), **config.get("method_options", {}).get(method, {})}


def per_unit(job: Job, stage: str) -> float:
    n, s = job.stages[stage]
    return s / n if n else 0.0


def sensitivity_sites(results: Path, model: str, method: str, bits: str) -> tuple[int, int] | None:
    """(measured, total) sites of quantface_mp's sensitivity pass, from its plan notes."""
    plan = results / model / method / bits / "plan.json"
    if not plan.is_file():
        return None
    notes = json.loads(plan.read_text()).get("notes", {})
    alloc = json.loads(notes.get("allocation", "{}"))
    text = alloc.get("sensitivity_sites", "")
    m = re.match(r"(\d+) of (\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


def paper_units(
    method: str, stage: str, job: Job, scale: dict, paper: dict, sites: tuple[int, int] | None
) -> float:
    """How many units of `stage` one paper-study quantize job of `method` runs."""
    so, po = options(scale, method), options(paper, method)
    n_scale, _ = job.stages[stage]
    calib = paper["calibration"]["n_images"]
    if stage in ("distill_step", "let_step", "lbq_step"):
        key = {"distill_step": "steps", "let_step": "let_steps", "lbq_step": "lbq_steps"}[stage]
        return po[key] * po["batch_size"] / so["batch_size"]  # step cost linear in batch size
    if stage == "fp_targets":
        return calib * (po.get("crops_per_image", 1) if method.startswith("quantface") else 1)
    if stage == "observe_ranges_image":
        return po["n_samples"] if method == "qdiffusion" else calib
    if stage in ("adaround_iter", "lsq_iter", "capture_input", "capture_output"):
        # the measured units' loops, scaled to every unit (max_units: a spaced subset was run)
        # and to the paper's iterations (a step's cost linear in its batch) or samples
        blocks = job.stages["find_blocks"][0]
        done = job.stages.get("units_reconstructed", (blocks, 0.0))[0] or blocks
        if stage in ("adaround_iter", "lsq_iter"):
            key = "w_iters" if stage == "adaround_iter" else "a_iters"
            per_job = po[key] / so[key] * po["batch_size"] / so["batch_size"]
        else:
            per_job = po["n_samples"] / so["n_samples"]
        return n_scale * blocks / done * per_job
    if stage == "smooth_candidate":  # per (layer, candidate); 2 * num_grids - 1 candidates
        return n_scale * (2 * po["num_grids"] - 1) / (2 * so["num_grids"] - 1)
    if stage == "lowrank_iter":  # per (layer, refit iterate): an upper bound (early stop)
        return n_scale * po["lowrank_iters"] / so["lowrank_iters"]
    if stage == "sensitivity_measurement":
        total = sites[1] if sites else n_scale / len(so["candidates"])
        per_image = po["sensitivity_images"] / so["sensitivity_images"]
        return total * len(po["candidates"]) * per_image
    return n_scale  # fixed-size stages (weight ranges, range searches, block search)


SCALED = {
    "distill_step",
    "let_step",
    "lbq_step",
    "fp_targets",
    "observe_ranges_image",
    "adaround_iter",
    "lsq_iter",
    "capture_input",
    "capture_output",
    "sensitivity_measurement",
    "smooth_candidate",
    "lowrank_iter",
}


def quantize_hours(
    method: str, job: Job, scale: dict, paper: dict, sites: tuple[int, int] | None
) -> tuple[float, bool]:
    """(hours of one paper quantize job, complete?) from one measured scale job."""
    loops = {s: v for s, v in job.stages.items() if s in SCALED}
    loop_s = sum(s for _, s in loops.values())
    if "quantize_total" in job.stages and job.seconds:  # the whole job: load, cost, write too
        fixed, complete = job.seconds - loop_s, True
    elif "quantize_total" in job.stages:  # method done, job stopped (cost/write): no TSV
        fixed, complete = job.stages["quantize_total"][1] - loop_s, False
    else:  # killed or failed inside the method: bill what was measured, flag it
        fixed, complete = 0.0, False
    total = fixed + sum(
        per_unit(job, s) * paper_units(method, s, job, scale, paper, sites) for s in loops
    )
    return total / 3600, complete


def restore_seconds_per_image(
    results: Path, model: str, parts: str, devices: set[str]
) -> tuple[float | None, float]:
    """Mean restoration seconds per image of the model's restore_evaluate job (one timing line
    per test set; the FP model's job is restore_evaluate/<model>/fp), and the job's max RSS."""
    job = load_job(results, "restore_evaluate", f"{model}/{parts}")
    if job is None or "restore_image" not in job.stages:
        return None, 0.0
    n, s = job.stages["restore_image"]
    devices.add(job.device)
    return (s / n if n else None), job.max_rss_mib


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--scale", default="config/scale.yaml")
    ap.add_argument("--paper", default="config/paper.yaml")
    ap.add_argument("--default", default="config/config.yaml", help="merged under both")
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.default).read_text())
    scale = merge_configs([base, yaml.safe_load(Path(args.scale).read_text())])
    paper = merge_configs([base, yaml.safe_load(Path(args.paper).read_text())])
    results, model = Path(args.results), scale["model"]["name"]
    n_test = sum(PAPER_IMAGES.values())
    measured = dict(quantized_cells(scale["methods"], scale["bits"]))
    cells: dict[str, int] = defaultdict(int)
    for m, _ in quantized_cells(paper["methods"], paper["bits"]):
        cells[m] += 1

    rows, devices, total_h = [], set(), 0.0
    calib = load_job(results, "calibrate", model)
    fp_s, fp_rss = restore_seconds_per_image(results, model, "fp", devices)
    if calib is not None and "calibration_image" in calib.stages:
        devices.add(calib.device)
        h = per_unit(calib, "calibration_image") * paper["calibration"]["n_images"] / 3600
        rows.append(["calibrate (64 images)", 1, fmt(h, 2), "-", fmt(h, 2), calib.max_rss_mib])
        total_h += h
    if fp_s is not None:
        h = fp_s * n_test / 3600
        rows.append(["fp (restore)", 1, "-", fmt(h), fmt(h), fp_rss])
        total_h += h
    notes = []
    for m in paper["methods"]:
        bits = measured.get(m)
        job = load_job(results, "quantize", f"{model}/{m}/{bits}") if bits else None
        if job is None:
            rows.append([m, cells[m], "not run", "not run", "-", 0.0])
            notes.append(f"{m}: no quantize job in the scale run")
            continue
        devices.add(job.device)
        if "quantize_total" not in job.stages and not set(job.stages) & SCALED:
            rows.append([m, cells[m], "not measured", "not measured", "-", job.max_rss_mib])
            notes.append(f"{m}: quantize stopped before any timed loop; nothing to bill")
            continue
        sites = sensitivity_sites(results, model, m, bits)
        q_h, complete = quantize_hours(m, job, scale, paper, sites)
        r_s, r_rss = restore_seconds_per_image(results, model, f"{m}/{bits}", devices)
        r_h = r_s * n_test / 3600 if r_s is not None else None
        cell_h = q_h + (r_h or 0.0)
        label = fmt(q_h) if complete else f">= {fmt(q_h)} (partial)"
        if job.seconds:  # CPU seconds per wall second: below the 2 threads = shared machine
            notes.append(f"{m}: quantize used {job.cpu_seconds / job.seconds:.2f} CPUs on average")
        if not complete:
            notes.append(f"{m}: quantize did not finish; billed stages only: {sorted(job.stages)}")
        if r_h is None:
            notes.append(f"{m}: restoration not measured (its quantize job did not finish)")
        rows.append(
            [m, cells[m], label, fmt(r_h), fmt(cell_h * cells[m]), max(job.max_rss_mib, r_rss)]
        )
        total_h += cell_h * cells[m]

    device = ", ".join(sorted(d for d in devices if d)) or "unknown"
    gpu = "cuda" in device
    print(f"Paper study ({args.paper}) extrapolated from the scale run in {results}/")
    print(
        f"measured on: {device}; test images: {n_test} ({' + '.join(map(str, PAPER_IMAGES.values()))})"
    )
    print()
    head = ["method", "cells", "quantize h/cell", "restore h/cell", f"total h ({device})"]
    head += [f"peak RSS GiB ({device})", "GPU-h", "peak GPU GiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        gpu_cols = [r[4] if gpu else "not measured", "not measured"]  # no GPU peak is logged
        print("| " + " | ".join(map(str, r[:5] + [fmt(r[5] / 1024, 1)] + gpu_cols)) + " |")
    gpu_total = f"{total_h:.1f}" if gpu else "not measured"
    missing = any(r[2] in ("not run", "not measured") or "partial" in str(r[2]) for r in rows)
    missing = missing or any(r[3] == "-" for r in rows if r[0] in cells)
    label = "measured rows only" if missing else "whole study"
    print(f"| **{label}** | | | | **{total_h:.1f}** | | {gpu_total} | not measured |")
    print()
    print("cells: quantize jobs per method in the paper study (its bit settings); each w6a6/w4a6")
    print("job is billed as the measured w4a4 one. Restoration: every cell restores all test")
    print("images. Evaluation is not billed (the paper's metrics were not measured).")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
