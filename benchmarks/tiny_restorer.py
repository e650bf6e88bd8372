"""Retrain the shipped `tiny` restorer from its recipe: is it reproduced here, and how good is it?

    PYTHONPATH=. python benchmarks/tiny_restorer.py [--config config/config.yaml] [--threads 2]
        [--write quantface/models/assets/tiny_restorer.safetensors]

Why: `prepare-model` uses `quantface/models/assets/tiny_restorer.safetensors` instead of training
when the run's recipe is the one recorded in the file (models/shipped.py). This script trains
that recipe from scratch (the embedded default's: its architecture, schedule, degradation and
the seed the workflow derives for `prepare_model`), on the thread count the file records, and
prints whether the retrained tensors are byte-identical to the shipped ones on this torch, the
training time, and the PSNR (RGB, dB, mean over images) of the degraded input, the shipped and
the retrained restorer on the default run's synthetic test faces (generated in memory).
`--write` stores the retrained model as the new shipped file (how the file was made).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from quantface.config import job_seed, load_config, model_options
from quantface.data.datasets import SyntheticFaces
from quantface.data.degradation import DegradationConfig
from quantface.io import to_tensor
from quantface.models.shipped import (
    fp_restorer,
    save_shipped,
    shipped_metadata,
    tensors_sha256,
    trained_parts,
    trained_state,
    training_recipe,
)
from quantface.models.tiny import PRETRAINED_VAE
from quantface.models.train import train_restorer


def psnr(pred: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (pred - ref).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--threads", type=int, default=None, help="default: what the file records")
    ap.add_argument("--write", type=Path, default=None, help="store the retrained model here")
    args = ap.parse_args()

    config = load_config(args.config)
    opts = model_options(config)
    seed = job_seed(config["seed"], "model", config["model"]["name"])
    recipe = training_recipe(
        config["model"]["name"], opts["arch"], opts["train"], opts["degradation"], seed
    )
    meta = shipped_metadata() or {}
    same_recipe = "recipe" in meta and json.loads(meta["recipe"]) == recipe
    threads = args.threads or int(meta.get("threads", 2))
    torch.set_num_threads(threads)

    t0 = time.perf_counter()
    retrained = train_restorer(
        recipe["model"], opts["arch"], opts["train"], opts["degradation"], seed
    )
    seconds = time.perf_counter() - t0
    sha = tensors_sha256(trained_state(retrained, trained_parts(recipe)))

    data = config["data"]
    n = int(data["datasets"]["synthetic_faces"]["n_images"])
    deg = DegradationConfig.from_dict(data.get("degradation", {}))
    pairs = SyntheticFaces.pairs(
        n, data["image_size"], deg, job_seed(config["seed"], "data", "synthetic_faces")
    )
    lq = torch.stack([to_tensor(np.ascontiguousarray(p[1])) for p in pairs])
    hq = torch.stack([to_tensor(np.ascontiguousarray(p[2])) for p in pairs])
    with torch.no_grad():
        rows = [("degraded input", psnr(lq, hq)), ("retrained here", psnr(retrained(lq), hq))]
        if same_recipe:
            shipped = fp_restorer(
                recipe["model"], opts["arch"], opts["train"], opts["degradation"], seed
            )
            rows.insert(1, ("shipped file", psnr(shipped(lq), hq)))

    print(f"recipe: {args.config} (model {recipe['model']}, seed {seed}), {threads} threads")
    print(f"training: {seconds:.0f} s wall on torch {torch.__version__}")
    print(f"shipped file: torch {meta.get('torch')}, {meta.get('threads')} threads")
    identical = same_recipe and sha == meta.get("tensors_sha256")
    print(f"byte-identical to the shipped file: {'yes' if identical else 'no'} ({sha[:16]})")
    print(f"\nPSNR on {n} synthetic test faces ({data['image_size']} px):")
    for name, value in rows:
        print(f"  {name:16s} {value:6.2f} dB")
    if args.write:
        save_shipped(retrained, recipe, args.write, threads, PRETRAINED_VAE)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
