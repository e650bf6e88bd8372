# Config validation, wildcard constraints and small helpers shared by all rules.
import json
import os
import re
import shlex
import sys

import quantface.config as qf_config
from quantface.config import check_model_assets, validate_config
from quantface.errors import QuantFaceError
from quantface.registry import DATASETS, METHODS, METRICS

# Snakemake reads the items of a list given with --config ("seeds=[0,1]") as text
if isinstance(config.get("seeds"), list):
    config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]
try:
    validate_config(config)
    if not os.path.exists(f"results/{config['model']['name']}/fp/model.pt"):
        check_model_assets(config)  # converted models no longer need the original files
except QuantFaceError as e:
    print(f"quantface: invalid config: {e}", file=sys.stderr)
    sys.exit(2)

_target = "results" if os.path.isdir("results") else "."
if not os.access(_target, os.W_OK):
    print(f"quantface: cannot write results to '{os.path.abspath(_target)}'", file=sys.stderr)
    sys.exit(2)

MODEL = config["model"]["name"]
METHOD_NAMES = [m for m in config["methods"] if m != "fp"]
ABLATION_CELLS = qf_config.ablation_cells(config)
ABLATION_NAMES = [v for v, _ in ABLATION_CELLS]
ABLATION_DATASETS = list(
    config.get("ablation", {}).get("datasets") or config["report"].get("synthetic", [])
)
# the controlled comparison: every method again with one quantizer scheme per protocol, as
# "<protocol>/<method>" cells (results/<model>/<protocol>/<method>/<bits>/)
PROTOCOL_CELLS = qf_config.protocol_cells(config)
PROTOCOL_NAMES = sorted({c for c, _ in PROTOCOL_CELLS})
# `seeds`: every native cell again per extra global seed, as "seed<s>/<method>" cells
# (results/<model>/seed<s>/<method>/<bits>/, with their own calibration set), for mean ± std
SEED_CELLS = qf_config.seed_cells(config)
SEED_NAMES = sorted({c for c, _ in SEED_CELLS})
BITS = list(config["bits"])
DATASET_NAMES = list(config["data"]["datasets"])
# torch threads per job are fixed, not taken from --cores, so results do not depend on the
# scheduler: 2 for calibration (one job that every other waits for), 1 for everything else:
# training (the shipped restorer's count), quantization, restoration and scoring run side by
# side, one core each, which uses two cores better than one 2-thread job at a time (measured:
# a 2-thread quantize job kept 1.13 cores busy).
TORCH_THREADS = 2
QUANTIZE_THREADS = 1
# Where computing jobs run: the config's `device` (validated above against this machine). It is
# a resource, not a param, so a profile can move single rules to a GPU (slurm-gpu sets
# `device: cuda` beside `gpu: 1`) and switching devices does not rerun finished jobs.
DEVICE = config.get("device", "auto")


def hang_up_like_terminate():
    """A closed terminal or ssh session (SIGHUP) stops the run as SIGTERM does: jobs are
    stopped, outputs marked incomplete and the lock released, so a plain rerun resumes. Called
    from `onstart`, after Snakemake's scheduler has installed its SIGTERM handler."""
    import signal

    signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM))


FORKSERVER = {}
# The server's own start costs about one job's start-up (6.3 s, 5.8 s of CPU) while the first jobs run;
# a job started from it saves ~4.5 s. Below this many jobs that is not worth a process.
FORKSERVER_MIN_JOBS = 4


def start_forkserver(workflow):
    """Jobs on this machine start as forks of one warm process (quantface/forkserver.py), not
    as fresh Pythons. Cluster jobs run elsewhere and start as before."""
    if not workflow.local_exec:
        return
    try:
        jobs = sum(1 for job in workflow.dag.needrun_jobs() if not job.rule.norun)
    except AttributeError:  # Snakemake moved its DAG API: start the server anyway
        jobs = FORKSERVER_MIN_JOBS
    if jobs >= FORKSERVER_MIN_JOBS:
        from quantface.forkserver import start

        FORKSERVER["path"] = start("results/logs/forkserver.log")


def stop_forkserver():
    from quantface.forkserver import stop

    stop(FORKSERVER.pop("path", None))


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    model=_alternatives([MODEL]),
    method=_alternatives(METHOD_NAMES + ABLATION_NAMES + PROTOCOL_NAMES + SEED_NAMES),
    seed=r"\d+",
    bits=_alternatives(sorted(set(BITS) | {b for _, b in ABLATION_CELLS})),
    dataset=_alternatives(DATASET_NAMES),


def shell_json(value):
    """A JSON value quoted for the shell (params are tracked: editing it reruns the job)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def job_seed(*parts):
    return qf_config.job_seed(config["seed"], *parts)


def cell_global_seed(method):
    """The global seed of a cell: its own for a "seed<s>/<method>" cell, else the run's."""
    s = qf_config.cell_seed(method)
    return config["seed"] if s is None else s


def calibration_seed(wildcards):
    """The calibration job's seed under its global seed: a `seed{seed}` wildcard, else the run's."""
    return qf_config.job_seed(int(wildcards.get("seed", config["seed"])), "calibrate", wildcards.model)


def quantize_seed(wildcards):
    """A protocol cell shares its native cell's seed (the two differ only in their quantizers);
    a seed cell takes its method's seed under its own global seed."""
    method = wildcards.method.partition("/")[2] or wildcards.method
    return qf_config.job_seed(
        cell_global_seed(wildcards.method), "quantize", wildcards.model, method, wildcards.bits
    )


def calibration_file(wildcards):
    """The calibration set a cell is quantized with: a seed cell's is drawn with its seed."""
    s = qf_config.cell_seed(wildcards.method)
    folder = "calib" if s is None else f"seed{s}/calib"
    return f"results/{wildcards.model}/{folder}/activations.pt"


def is_paired(dataset):
    return DATASETS.get(dataset)().paired


def metric_names(dataset, quantized):
    m = config["metrics"]
    names = list(m["no_reference"])
    if is_paired(dataset):
        names = list(m["full_reference"]) + names
    if quantized:
        names += list(m.get("fidelity", []))
    return names


def manifests(datasets):
    return [f"results/data/{d}/manifest.json" for d in datasets]


def cell_files(cell, datasets, name):
    """Per-set outputs of one model's job: results/<model>/<cell>/<dataset>/<name>."""
    return [f"results/{{model}}/{cell}/{d}/{name}" for d in datasets]


def test_sets(model, cell, datasets):
    """The --sets JSON of `quantface restore-evaluate` for one model's job (quantface/cell.py);
    cell is "input", "fp" or "<method>/<bits>"."""
    quantized = cell not in ("input", "fp")
    sets = []
    for d in datasets:
        paired = is_paired(d)
        entry = {
            "dataset": d,
            "lq": f"results/data/{d}/lq",
            "manifest": f"results/data/{d}/manifest.json",
            "metrics_out": f"results/{model}/{cell}/{d}/metrics.csv",
            "metrics": metric_names(d, quantized),
            "hq": f"results/data/{d}/hq" if paired else None,
        }
        if cell != "input":
            entry["images"] = f"results/{model}/{cell}/{d}/images"
        if quantized:
            entry["fp"] = f"results/{model}/fp/{d}/images"
        sets.append(entry)
    return shell_json(sets)


def dataset_options(wildcards):
    opts = dict(config["data"]["datasets"][wildcards.dataset])
    opts["image_size"] = config["data"]["image_size"]
    opts["degradation"] = config["data"].get("degradation", {})
    return shell_json(opts)


def train_options(wildcards):
    return shell_json(qf_config.model_options(config))


def method_options(wildcards):
    return shell_json(qf_config.resolve_method(config, wildcards.method)[1])


def balancing_options(wildcards):
    """QuantFace's balancing options (`method_options.quantface`) for `calibrate --balanced`."""
    opts = qf_config.resolve_method(config, "quantface")[1]
    return shell_json({k: v for k, v in opts.items() if k in ("balancing", "alpha", "seed")})


def method_base(wildcards):
    """The registered method behind a method, ablation-variant or protocol cell name."""
    return qf_config.resolve_method(config, wildcards.method)[0]


def method_scheme(wildcards):
    """`--scheme JSON` for a protocol cell; nothing for a native one (the method's own)."""
    scheme = qf_config.resolve_scheme(config, wildcards.method)
    return f"--scheme {shell_json(scheme)}" if scheme is not None else ""


def quantized_cells():
    return qf_config.quantized_cells(METHOD_NAMES, BITS)


def all_metric_files():
    files = []
    for d in DATASET_NAMES:
        files.append(f"results/{MODEL}/input/{d}/metrics.csv")
        files.append(f"results/{MODEL}/fp/{d}/metrics.csv")
        files += [f"results/{MODEL}/{m}/{b}/{d}/metrics.csv" for m, b in quantized_cells()]
        files += [f"results/{MODEL}/{c}/{b}/{d}/metrics.csv" for c, b in PROTOCOL_CELLS]
        files += [f"results/{MODEL}/{c}/{b}/{d}/metrics.csv" for c, b in SEED_CELLS]
    for d in ABLATION_DATASETS:
        files += [f"results/{MODEL}/{v}/{b}/{d}/metrics.csv" for v, b in ABLATION_CELLS]
    return files


def all_cost_files():
    return [f"results/{MODEL}/fp/cost.json"] + [
        f"results/{MODEL}/{m}/{b}/cost.json"
        for m, b in quantized_cells() + ABLATION_CELLS + PROTOCOL_CELLS + SEED_CELLS
    ]


# every table in each format; .html is the Markdown rendered, shown as a page in the report
TABLE_FORMATS = ("md", "html", "tex", "csv")


def table_outputs():
    outs = []
    rep = config["report"]
    for stem, key in (("table1_synthetic", "synthetic"), ("table3_realworld", "realworld")):
        if rep.get(key):
            outs += [f"results/tables/{stem}.{ext}" for ext in TABLE_FORMATS]
    if ABLATION_CELLS:
        outs += [f"results/tables/ablation.{ext}" for ext in TABLE_FORMATS]
    for p in qf_config.protocol_schemes(config):
        for stem, key in (("table1_synthetic", "synthetic"), ("table3_realworld", "realworld")):
            if rep.get(key):
                outs += [f"results/tables/{stem}_{p}.{ext}" for ext in TABLE_FORMATS]
        outs += [f"results/tables/quantizer_effect_{p}.{ext}" for ext in TABLE_FORMATS]
    if SEED_CELLS:
        outs += [f"results/tables/seeds.{ext}" for ext in TABLE_FORMATS]
    return outs + [f"results/tables/cost.{ext}" for ext in TABLE_FORMATS]


def qualitative_dataset():
    synthetic = config["report"].get("synthetic", [])
    return synthetic[0] if synthetic else DATASET_NAMES[0]


def qualitative_spec(wildcards):
    d = qualitative_dataset()
    bits = config["report"].get("qualitative_bits", BITS[-1])
    cols = [["LQ", f"results/data/{d}/lq"], ["FP", f"results/{MODEL}/fp/{d}/images"]]
    cols += [[m, f"results/{MODEL}/{m}/{b}/{d}/images"] for m, b in quantized_cells() if b == bits]
    if is_paired(d):
        cols.append(["HQ", f"results/data/{d}/hq"])
    n = config["report"].get("qualitative_images", 4)
    return shell_json({"dataset": d, "bits": bits, "n_images": n, "columns": cols})


def qualitative_inputs(wildcards):
    d = qualitative_dataset()
    bits = config["report"].get("qualitative_bits", BITS[-1])
    return [f"results/data/{d}/manifest.json", f"results/{MODEL}/fp/{d}/images"] + [
        f"results/{MODEL}/{m}/{b}/{d}/images" for m, b in quantized_cells() if b == bits
    ]


def mixed_cells():
    """(method, bits) cells with a mixed-precision plan, drawn in the bit-width map."""
    return [(m, b) for m, b in quantized_cells() if b.startswith("mp")]


def plan_options(wildcards):
    """--plan LABEL=PATH per mixed cell, labelled as the tables name the cell ("QuantFace-MP MP4")."""
    return " ".join(
        "--plan " + shlex.quote(f"{METHODS.label(m)} {b.upper()}=results/{MODEL}/{m}/{b}/plan.json")
        for m, b in mixed_cells()
    )


def figure_outputs():
    figs = [f"results/figures/quality_vs_bits_{d}.png" for d in DATASET_NAMES]
    figs += [f"results/figures/quality_vs_cost_{d}.png" for d in DATASET_NAMES]
    figs += [
        "results/figures/activation_distribution.png",
        f"results/figures/qualitative_{qualitative_dataset()}.png",
    ]
    if mixed_cells():
        figs.append("results/figures/bit_width_map.png")
    return figs


def footnotes():
    return f"--footnote {shlex.quote(qf_config.model_footnote(config))}"


def final_outputs():
    return ["results/metrics.csv", "results/cost.csv"] + table_outputs() + figure_outputs()


FIGURE_CAPTIONS = {  # figure file stem prefix -> caption file (relative to workflow/rules/)
    "quality_vs_bits": "../report/quality_vs_bits.rst",
    "quality_vs_cost": "../report/quality_vs_cost.rst",
    "activation_distribution": "../report/activation_distribution.rst",
    "bit_width_map": "../report/bit_width_map.rst",
    "qualitative": "../report/qualitative.rst",
}


def figure_caption(path):
    stem = os.path.basename(path).rsplit(".", 1)[0]
    return next(c for prefix, c in FIGURE_CAPTIONS.items() if stem.startswith(prefix))


def report_labels(path):
    """Labels that sort report entries: the file's name without its extension, and the format."""
    name, ext = os.path.basename(path).rsplit(".", 1)
    return {"name": name, "format": ext}
