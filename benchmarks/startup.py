"""Start-up cost per workflow rule: what a job pays in imports before its command does any work.

    python benchmarks/startup.py [--repeats 3]

Why: every Snakemake job is a fresh `quantface` process, so each one pays the imports its
command needs (torch, diffusers, pyiqa, pandas, matplotlib, ...) before it computes anything;
on a 2-core machine that start-up was a large share of the default run's short jobs. For each
rule this script starts a fresh Python that imports exactly what that rule's command imports
before its work (the CLI, then the modules its `cmd_*` function and the work it calls load
first) and reports the median wall time over `--repeats` runs, beside the plain interpreter
and the listing commands (`quantface methods`, which must stay cheap). Figures depend on the
machine's load and disk cache: run it with nothing else running, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# rule -> the imports its command performs before working (cli.py's cmd_* and what they call)
RULES: dict[str, list[str]] = {
    "(python itself)": [],
    "quantface --help / methods / models": ["quantface.cli", "quantface.registry"],
    "check-config, Snakefile parse": ["quantface.cli", "quantface.config", "quantface.models.tiny"],
    "prepare_data": ["quantface.cli", "quantface.data.datasets"],
    "prepare_model": ["quantface.cli", "quantface.models.checkpoint", "quantface.models.tiny"],
    "calibrate": [
        "quantface.cli",
        "quantface.api",
        "quantface.quant.calibration",
        "quantface.models.tiny",
    ],
    "quantize (maxmin)": [
        "quantface.cli",
        "quantface.api",
        "quantface.quant.cost",
        "quantface.models.tiny",
        "baselines.maxmin",
    ],
    "restore_evaluate": [
        "quantface.cli",
        "quantface.cell",
        "quantface.models.tiny",
        "quantface.metrics.iqa",
        "pyiqa",
    ],
    "aggregate, tables": ["quantface.cli", "quantface.report.tables"],
    "figures": ["quantface.cli", "quantface.report.figures", "matplotlib.pyplot"],
}


def time_imports(modules: list[str]) -> float:
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    time_imports(RULES["restore_evaluate"])  # warm the disk cache once
    print(f"start-up per rule, median of {args.repeats} fresh processes (s)\n")
    print("| rule | imports | start-up s |\n|---|---|---:|")
    for rule, modules in RULES.items():
        t = statistics.median(time_imports(modules) for _ in range(args.repeats))
        shown = ", ".join(m for m in modules if m != "quantface.cli") or "-"
        print(f"| {rule} | {shown} | {t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
