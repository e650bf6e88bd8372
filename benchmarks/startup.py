"""Start-up cost per workflow rule: what a job pays in imports before its command does any work.

    python benchmarks/startup.py [--repeats 3]

Why: every Snakemake job is a fresh `quantface` process, so each one pays the imports its
command needs (torch, diffusers, pyiqa, pandas, matplotlib, ...) before it computes anything;
on a 2-core machine that start-up was a large share of the default run's short jobs. For each
rule this script starts a fresh Python that does what that rule's command does before its work
(the CLI, its set-up -- which loads diffusers' model code with its unused back-ends hidden,
quantface/lean_imports.py -- then the modules its `cmd_*` function and the work it calls load
first) and reports the median wall time over `--repeats` runs, beside the plain interpreter,
`--help`, the listing commands and `check-config` on the default config (run as commands: they
must stay cheap). Figures depend on the
machine's load and disk cache: run it with nothing else running, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = "set-up"  # what every computing command runs first: "set-up <command>" (cli._setup)

# rule -> what its command does before working: the CLI's set-up, then the modules its cmd_*
# function and the work it calls import first; the listings and check-config run the command
RULES: dict[str, list[str]] = {
    "(python itself)": [],
    "quantface --help": ["quantface.cli", "main --help"],
    "quantface methods / models": ["quantface.cli", "main methods", "main models"],
    "check-config (default config), Snakefile parse": [
        "quantface.cli",
        "main check-config config/config.yaml",
    ],
    "prepare_data": ["quantface.cli", f"{SETUP} prepare-data", "quantface.data.datasets"],
    "prepare_model": [
        "quantface.cli",
        f"{SETUP} prepare-model",
        "quantface.models.checkpoint",
        "quantface.models.tiny",
    ],
    "calibrate": [
        "quantface.cli",
        f"{SETUP} calibrate",
        "quantface.api",
        "quantface.quant.calibration",
        "quantface.models.tiny",
    ],
    "quantize (maxmin)": [
        "quantface.cli",
        f"{SETUP} quantize",
        "quantface.api",
        "quantface.quant.cost",
        "quantface.models.tiny",
        "baselines.maxmin",
    ],
    "restore_evaluate": [
        "quantface.cli",
        f"{SETUP} restore-evaluate",
        "quantface.cell",
        "quantface.models.tiny",
        "quantface.metrics.iqa",
        "pyiqa",
    ],
    "aggregate, tables": ["quantface.cli", f"{SETUP} tables", "quantface.report.tables"],
    "figures": [
        "quantface.cli",
        f"{SETUP} figures",
        "quantface.report.figures",
        "matplotlib.pyplot",
    ],
}


def _line(step: str) -> str:
    if step.startswith(SETUP):
        command = step.split()[1]
        return f"import argparse; cli._setup(argparse.Namespace(command={command!r}, seed=0, threads=1))\n"
    if step.startswith("main "):  # --help exits through argparse
        return f"with contextlib.suppress(SystemExit): cli.main({step.split()[1:]!r})\n"
    return f"importlib.import_module({step!r})\n"


def time_imports(steps: list[str]) -> float:
    code = "import contextlib, importlib, io\n"
    if "quantface.cli" in steps:
        code += "import quantface.cli as cli\n"
    code += "with contextlib.redirect_stdout(io.StringIO()):\n"
    code += "".join("    " + _line(s) for s in steps if s != "quantface.cli") + "    pass\n"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
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
        shown = ", ".join(m for m in modules if m != "quantface.cli")
        print(f"| {rule} | {shown or '-'} | {t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
