"""Quality against training budget for every learned method on the default model: where is the knee?

    PYTHONPATH=. python benchmarks/budget_curves.py [--config config/config.yaml] [--bits w4a4]
        [--methods qdiffusion passionsr efficientdm quantface quantface_mp]
        [--scales 0 0.25 0.5 1 2 4]
        [--threads 1] [--out budget_curves.csv]

Why: the learned methods' iteration counts are most of the default run's time, and a budget is
only worth its seconds while quality still rises with it. For each method this script quantizes
the embedded default's FP restorer (the shipped one, the config's calibration settings and
seed) with a budget unit (`GRID_UNIT`, else the config's budget) scaled by each `--scale` (every
budget key of the method together, `Options.training_budget`: Q-Diffusion's AdaRound and LSQ
iterations, PassionSR's LET and LBQ steps, the distillation steps of EfficientDM and QuantFace),
restores the default run's synthetic test faces and prints PSNR-FP (dB, pyiqa `psnr` of the
8-bit quantized output against the 8-bit FP output, mean over images, as in the tables) and the
quantization seconds.

The knee rule, the same for every method (`quantface.report.knee`): zero iterations if no
budget beats zero beyond noise (95% paired bootstrap over images), else Kneedle over the grid of
scales: the budget whose gain over zero, scaled by the largest gain, lies farthest above the
diagonal. The grid is part of the result (Kneedle depends on the range measured), so the scales
must start at 0. Timings are wall seconds on the machine it runs on, single process,
`--threads` torch threads. `--out` writes every point with its per-image scores.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from quantface.api import calibrate, quantize
from quantface.config import job_seed, load_config, model_options, resolve_method
from quantface.data.datasets import SyntheticFaces
from quantface.data.degradation import DegradationConfig
from quantface.io import to_tensor
from quantface.models.shipped import fp_restorer
from quantface.registry import METHODS, METRICS
from quantface.report.knee import knee_index

# The budget each grid multiplies (scale 1): the embedded default's budgets before the knee rule
# set them, so the grid, and with it the knee, stays the one the README reports. A method not
# named here scales its budget from the config.
GRID_UNIT = {
    "qdiffusion": {"w_iters": 30, "a_iters": 15},
    "passionsr": {"let_steps": 20, "lbq_steps": 20},
    "efficientdm": {"steps": 40},
    "quantface": {"steps": 60},
    "quantface_mp": {"steps": 60},
}


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """What a PNG keeps: the tables score written images, not floats."""
    return (x.clamp(0, 1) * 255).round() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument(
        "--methods", nargs="+", default=None, help="default: every method with a budget"
    )
    ap.add_argument("--scales", nargs="+", type=float, default=[0, 0.25, 0.5, 1, 2, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the points as CSV")
    args = ap.parse_args()
    budget_keys = {m: METHODS.get(m).options.training_budget for m in (args.methods or METHODS)}
    budget_keys = {m: keys for m, keys in budget_keys.items() if keys or args.methods}
    if args.scales[0] != 0 or sorted(set(args.scales)) != args.scales:
        ap.error("--scales must rise from 0 (the knee rule compares every budget with zero)")
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    opts = model_options(config)
    name = config["model"]["name"]
    fp = fp_restorer(name, opts["arch"], opts["train"], opts["degradation"],
                     job_seed(config["seed"], "model", name))  # fmt: skip
    cal = config["calibration"]
    calib = calibrate(
        fp,
        n_images=cal["n_images"],
        batch_size=cal["batch_size"],
        sample_rows=cal["sample_rows"],
        seed=job_seed(config["seed"], "calibrate", name),
        degradation=opts["degradation"],
        device="cpu",
    )
    data = config["data"]
    n = int(data["datasets"]["synthetic_faces"]["n_images"])
    pairs = SyntheticFaces.pairs(
        n, data["image_size"], DegradationConfig.from_dict(data.get("degradation", {})),
        job_seed(config["seed"], "data", "synthetic_faces"),
    )  # fmt: skip
    lq = torch.stack([to_tensor(np.ascontiguousarray(p[1])) for p in pairs])
    psnr = METRICS.get("psnr_fp")
    psnr.build(Path(config["metrics"]["weights_dir"]), "cpu")
    with torch.no_grad():
        ref = eight_bit(fp(lq))

    rows = []
    print(f"model {name} (shipped FP), {args.bits}, {n} synthetic test faces, "
          f"seed {config['seed']}, {args.threads} thread(s)")  # fmt: skip
    for method in budget_keys:
        base = resolve_method(config, method)[1]
        unit = GRID_UNIT.get(method) or {k: base.get(k) for k in budget_keys[method]}
        if any(not unit.get(k) for k in budget_keys[method]):
            raise SystemExit(f"method_options.{method}: {unit} has no budget to scale")
        bits = "mp" + args.bits.split("a")[1] if method == "quantface_mp" else args.bits
        points = []
        for scale in args.scales:
            budget = {k: round(scale * unit[k]) for k in budget_keys[method]}
            t0 = time.perf_counter()
            result = quantize(fp, method, bits, calib, {**base, **budget},
                              seed=job_seed(config["seed"], "quantize", name, method, bits),
                              device="cpu")  # fmt: skip
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                out = eight_bit(result.model(lq))
            per_image = psnr.score(out, ref).double().cpu().numpy()
            points.append({"budget": budget, "seconds": seconds, "per_image": per_image})
            print(f"  {method:13s} {bits:5s} {budget!s:36s} PSNR-FP {per_image.mean():6.2f} dB"
                  f"  {seconds:6.1f} s", flush=True)  # fmt: skip
        k = points[knee_index(args.scales, [p["per_image"] for p in points], config["seed"])]
        print(
            f"  {method}: knee at {k['budget']} ({k['seconds']:.0f} s; config "
            f"{ {key: base.get(key) for key in budget_keys[method]} })",
            flush=True,
        )
        for p in points:
            rows.append({"method": method, "bits": bits, **{f"budget_{key}": v for key, v in p["budget"].items()},
                         "psnr_fp": round(float(p["per_image"].mean()), 4),
                         "seconds": round(p["seconds"], 1), "knee": p is k,
                         "per_image_psnr_fp": " ".join(f"{v:.4f}" for v in p["per_image"])})  # fmt: skip
    if args.out:
        keys = sorted({key for r in rows for key in r}, key=lambda x: (x != "method", x))
        with args.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
