"""glibc's defaults against the allocator thresholds every command sets (quantface/allocator.py).

    PYTHONPATH=. python benchmarks/allocator.py [--model results/tiny/efficientdm/w4a4/model.pt]
        [--repeats 4] [--threads 1]

Each figure is a mean over calls in a fresh process per setting (the thresholds are per
process), the two settings alternating `--repeats` times; printed are the median over the
processes and the range. Measured: one
fake quantization of an (8, 32, 128, 128) float32 tensor, with autograd (the training path:
eight elementwise ops, each a new tensor) and without it (the in-place path), and, when `--model`
exists (a default run's output), restoring one batch of 8 random 128-px images with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = r"""
import json, sys, time
from quantface.allocator import keep_freed_memory
applied = keep_freed_memory()
import torch
torch.set_num_threads(int(sys.argv[2]))
from quantface.quant.quantizer import fake_quant

def mean_of(fn, n):  # the mean, not the best: the cost every call pays in a long loop
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n

out = {"applied": applied}
with torch.no_grad():
    if sys.argv[1]:  # first, as a restore job runs: the model's batches on a fresh heap
        from quantface.models.checkpoint import load_bundle
        bundle = load_bundle(sys.argv[1], device="cpu")[0]
        lq = torch.rand(8, 3, bundle.image_size, bundle.image_size)
        out["restore_batch8_s"] = mean_of(lambda: bundle.restore(lq), 5)
x = torch.randn(8, 32, 128, 128)
s, z = torch.tensor(0.05, requires_grad=True), torch.tensor(7.0)
out["fake_quant_autograd_ms"] = 1e3 * mean_of(lambda: fake_quant(x, s, z, 0, 15), 10)
with torch.no_grad():
    out["fake_quant_inplace_ms"] = 1e3 * mean_of(lambda: fake_quant(x, s, z, 0, 15), 10)
print(json.dumps(out))
"""


def probe(setting: str, model: str, threads: int) -> dict:
    env = {**os.environ, "QUANTFACE_MALLOC": setting}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, model, str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="results/tiny/efficientdm/w4a4/model.pt")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    model = args.model if os.path.isfile(args.model) else ""
    runs: dict[str, list[dict]] = {"default": [], "thresholds": []}
    for _ in range(args.repeats):
        runs["default"].append(probe("default", model, args.threads))
        runs["thresholds"].append(probe("", model, args.threads))
    if not all(r["applied"] for r in runs["thresholds"]):
        print("note: the thresholds could not be set here (not glibc): both rows are glibc's own")
    keys = [k for k in runs["default"][0] if k != "applied"]
    print(
        f"{args.repeats} fresh processes per setting, {args.threads} thread(s); median [min, max]"
    )
    print("| setting | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, rows in runs.items():
        cells = []
        for k in keys:
            v = [r[k] for r in rows]
            cells.append(f"{statistics.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if not model:
        print(f"({args.model} absent: no restore figure; run the default workflow first)")


if __name__ == "__main__":
    main()
