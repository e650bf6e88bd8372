"""`quantface` command line: the contract the Snakemake rules (and users) rely on.

Every path is explicit; every option a rule passes is also a documented flag. User errors
(`QuantFaceError`) print one line naming the file/key and exit with code 2. Every subcommand that
computes takes `--device` (quantface/device.py); running out of memory prints one line naming the
command, the stage and the peak memory reached, and exits with code 1 (outputs already written
stay: every writer is atomic).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may wait on a network

from quantface.errors import ConfigError, OutputError, QuantFaceError
from quantface.lean_imports import import_diffusers_models
from quantface.memory import (
    current_stage,
    enter_stage,
    is_out_of_memory,
    memory_guard,
    peak_memory,
)

log = logging.getLogger("quantface")
LISTINGS = ("methods", "metrics", "datasets", "models", "check-config")  # no run log for these
# commands that load no diffusers model (checked: their modules never import it): their set-up
# skips the lean diffusers import
MODEL_FREE = ("prepare-data", "aggregate", "tables", "deploy-report", "deploy-trt")


def _json(text: str | None, flag: str = "--options") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise QuantFaceError(f"{flag} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise QuantFaceError(f"{flag} must be a JSON object")
    return value


def _package_version() -> str:
    import quantface

    return quantface.__version__


def _versions() -> str:
    from importlib.metadata import version

    import torch

    import quantface

    return (
        f"quantface {quantface.__version__}, torch {torch.__version__}, diffusers "
        f"{version('diffusers')}, python {platform.python_version()}"
    )


# command -> (flags naming what it reads, flags naming what it writes); restore checks its own
IO_FLAGS = {
    "train": ((), ("out",)),
    "prepare-model": ((), ("out",)),
    "pretrain-vae": ((), ("out",)),
    "calibrate": (("model", "images", "balanced"), ("out",)),
    "quantize": (("model", "calib"), ("out",)),
    "cost": (("model",), ("out",)),
    "export": (("model",), ("out", "report")),
    "deploy-bench": (("model", "onnx", "fp", "images"), ("out",)),
    "deploy-report": (("bench",), ("out", "figure")),
    "deploy-trt": (("onnx",), ("out", "report")),
    "evaluate": (("pred", "ref", "fp", "manifest"), ("out",)),
    "compare": (("input", "models"), ("out",)),
    "aggregate": (
        ("metrics", "per_image", "costs", "exports"),
        ("out", "per_image_out", "cost_out", "export_out"),
    ),
    "tables": (("metrics", "per_image", "cost"), ("out",)),
    "figures": (("metrics", "per_image", "cost", "calib", "calib_after"), ("out",)),
}


def _paths(args: argparse.Namespace, flags: tuple[str, ...]) -> list[tuple[str, Path]]:
    found = []
    for flag in flags:
        value = getattr(args, flag, None)
        for v in value if isinstance(value, list) else [value]:
            if v:
                found.append((flag, Path(v).resolve()))
    return found


def check_outputs(args: argparse.Namespace) -> None:
    """No command may write over, or into, what it reads, nor replace a file it did not write:
    one line, before any work. (Folder outputs are checked by their writers: `atomic_dir`,
    `OutputFolder`.)"""
    from quantface.io import check_replaceable

    ins, outs = IO_FLAGS.get(args.command, ((), ()))
    for out_flag, out in _paths(args, outs):
        flag = f"--{out_flag.replace('_', '-')}"
        for in_flag, inp in _paths(args, ins):
            if out == inp or inp in out.parents:
                where = "is" if out == inp else "is inside"
                raise OutputError(
                    f"{flag} {out} {where} --{in_flag.replace('_', '-')} {inp}: it would "
                    "overwrite what the command reads; write elsewhere"
                )
        check_replaceable(out, flag)


def record_outputs(args: argparse.Namespace) -> None:
    """Record the single files a finished command wrote as the suite's, so rerunning it may
    replace them (`check_outputs`)."""
    from quantface.io import record_written

    for _, out in _paths(args, IO_FLAGS.get(args.command, ((), ()))[1]):
        if out.is_file():
            record_written(out)


def _setup(args: argparse.Namespace) -> None:
    """Logging, the allocator (quantface/allocator.py) and the determinism pins every command
    shares (tests/test_determinism.py).

    Intra-op threads come from `--threads` (rules pass a fixed number, never `{threads}`, which
    shrinks with `--cores`): a reduction split over another number of threads can round
    differently. Global RNGs are seeded so no stray draw depends on the process. On CPU every op
    this package runs is deterministic already; `use_deterministic_algorithms` (warn only) and
    the cuBLAS workspace setting keep a GPU run reproducible too, and TF32 is off so the FP
    reference and the fake-quant simulation compute in float32 on every device.
    """
    import numpy as np
    import torch

    from quantface.allocator import keep_freed_memory

    keep_freed_memory()  # freed tensors' pages are reused, not faulted in anew (allocator.py)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.allow_tf32 = False  # FP32 means FP32 on a GPU too (torch: TF32 convs)
    torch.backends.cuda.matmul.allow_tf32 = False
    seed = getattr(args, "seed", 0)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    log.info("command: %s", " ".join(sys.argv[1:]))
    if getattr(args, "command", None) not in MODEL_FREE:
        import_diffusers_models()  # before anything imports diffusers: 2.9 s less per job
    log.info("versions: %s", _versions())
    if hasattr(args, "device"):  # checked before any work: a missing GPU is one line, exit 2
        from quantface.device import describe, resolve_device

        args.device = resolve_device(args.device)
        log.info("device: %s", describe(args.device))


# --- subcommands -------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> None:
    """What `snakemake` checks at parse time, without Snakemake: schema, names, bits, sources."""
    from quantface.config import load_config, merge_configs, validate_config

    validate_config(merge_configs([load_config(p, validate=False) for p in args.config]))
    print(f"valid: {', '.join(args.config)}")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from quantface.registry import DATASETS

    opts = _json(args.options)
    enter_stage("prepare data")
    dataset = DATASETS.get(args.dataset)()
    manifest = dataset.prepare(Path(args.out), opts, args.seed, device=str(args.device))
    log.info("wrote %d images of %s to %s", manifest["n_images"], args.dataset, args.out)


def cmd_train(args: argparse.Namespace) -> None:
    from quantface.models.checkpoint import save_bundle
    from quantface.models.shipped import fp_restorer

    opts = _json(args.options)
    enter_stage("train")
    model = fp_restorer(
        args.model,
        opts.get("arch", {}),
        opts.get("train", {}),
        opts.get("degradation", {}),
        args.seed,
        device=args.device,
    )
    enter_stage("write model")
    save_bundle(model, args.out, meta={"method": "fp", "seed": args.seed, "options": opts})


def cmd_prepare_model(args: argparse.Namespace) -> None:
    """The FP model of the study: converted from local files when the model has them, else trained."""
    from quantface.models.checkpoint import save_bundle
    from quantface.registry import MODELS

    opts = _json(args.options)
    cls = MODELS.get(args.model)
    if not hasattr(cls, "from_assets"):
        cmd_train(args)
        return
    enter_stage("convert weights")  # on the CPU: reading and merging files, no forward pass
    model = cls.from_assets(opts.get("assets", {}), opts.get("arch", {}))
    meta = {"method": "fp", "seed": args.seed, "assets": opts.get("assets", {})}
    save_bundle(model, args.out, meta=meta)
    log.info("converted %s from %s into %s", args.model, opts.get("assets"), args.out)


def cmd_pretrain_vae(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from quantface.io import atomic_path
    from quantface.models.train import pretrain_vae

    opts = _json(args.options)
    enter_stage("pretrain vae")
    model = pretrain_vae(opts.get("arch", {}), args.steps, args.seed, device=args.device)
    meta = {
        "arch": json.dumps(model.vae_arch()),
        "steps": str(args.steps),
        "seed": str(args.seed),
        "made_by": f"quantface pretrain-vae --steps {args.steps} --seed {args.seed}",
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.vae.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp), metadata=meta)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from quantface.api import balanced_calibration, calibrate

    if args.balanced:
        calib = balanced_calibration(
            args.model,
            args.balanced,
            _json(args.options),
            batch_size=args.batch_size,
            device=args.device,
        )
        enter_stage("write calibration")
        calib.save(args.out)
        return
    calib = calibrate(
        args.model,
        args.images,
        n_images=args.n_images,
        batch_size=args.batch_size,
        sample_rows=args.sample_rows,
        seed=args.seed,
        degradation=_json(args.degradation),
        device=args.device,
    )
    enter_stage("write calibration")
    calib.save(args.out)


def cmd_quantize(args: argparse.Namespace) -> None:
    from quantface.api import quantize

    result = quantize(
        args.model,
        args.method,
        args.bits,
        args.calib,
        _json(args.options),
        seed=args.seed,
        device=args.device,
        scheme=_json(args.scheme, "--scheme") if args.scheme else None,
        label=args.label,
    )
    enter_stage("write")
    result.save(args.out)
    t = result.cost["total"]
    log.info(
        "param bits %.3g (%.2f%% fewer than FP32), BOPs %.3g (%.2f%% fewer)",
        t["param_bits"],
        100 * t["param_bits_reduction"],
        t["bops"],
        100 * t["bops_reduction"],
    )


def cmd_cost(args: argparse.Namespace) -> None:
    from quantface.io import atomic_write_text
    from quantface.models.checkpoint import load_bundle
    from quantface.quant.apply import current_layout, plan_of
    from quantface.quant.cost import cost_table
    from quantface.quant.describe import quantizer_summary

    enter_stage("load model")
    model, _, meta = load_bundle(args.model, device=args.device)
    enter_stage("cost count")
    cost = cost_table(model, plan_of(model))
    cost.update(model=model.name, method=meta.get("method", "fp"), bits=meta.get("bits", "fp32"))
    cost["quantizer"] = quantizer_summary(current_layout(model))
    atomic_write_text(args.out, json.dumps(cost, indent=1))


def cmd_export(args: argparse.Namespace) -> None:
    """`--format packed`: packed low-bit file + size.json, measured bytes on disk beside the cost
    model's. `--format onnx`: the restore graph for ONNX Runtime (quantface/deploy)."""
    if args.format == "onnx":
        return _export_onnx(args)
    if not args.report:
        raise QuantFaceError("export --format packed needs --report (the size.json to write)")
    import torch

    from quantface.io import atomic_write_text
    from quantface.models.checkpoint import load_bundle
    from quantface.quant.apply import plan_of
    from quantface.quant.cost import cost_table
    from quantface.quant.pack import export_bundle, load_packed

    enter_stage("load model")
    model, layout, meta = load_bundle(args.model, device=args.device)
    if not layout:
        raise QuantFaceError(f"{args.model} is not quantized: export a quantized model.pt")
    enter_stage("pack")
    sizes = export_bundle(model, layout, args.out, meta)
    cost = cost_table(model, plan_of(model))["total"]
    report = {
        "model": model.name,
        "method": meta.get("method", ""),
        "bits": meta.get("bits", ""),
        "disk_bytes": sizes.pop("file"),
        "cost_model_bytes": cost["size_bytes"],
        "fp32_bytes": cost["fp32_param_bits"] // 8,
        "parts_bytes": sizes,
    }
    report["disk_over_cost_model"] = report["disk_bytes"] / report["cost_model_bytes"]
    if args.verify:  # the packed model must compute exactly what the simulated one does
        enter_stage("verify")
        back = load_packed(args.out)[0].to(args.device)
        s = model.image_size
        x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(args.seed))
        x = x.to(args.device)  # drawn on the CPU: the same input whatever the device
        with torch.no_grad():
            report["bit_identical"] = bool(torch.equal(back.restore(x), model.restore(x)))
        if not report["bit_identical"]:
            raise QuantFaceError(f"{args.out} does not reproduce {args.model} bit for bit")
    atomic_write_text(args.report, json.dumps(report, indent=1))
    log.info(
        "packed %s: %d bytes on disk, cost model %d (x%.4f)",
        args.out,
        report["disk_bytes"],
        report["cost_model_bytes"],
        report["disk_over_cost_model"],
    )


def _deploy_extra() -> None:
    """The deploy commands need the `[deploy]` extra: say so in one line."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise QuantFaceError(
            f"{' and '.join(missing)} not installed: pip install 'quantface-bench[deploy]'"
        )


def _export_onnx(args: argparse.Namespace) -> None:
    """The (quantized or FP) restorer as one ONNX graph; report: which path each site takes,
    the exported node types and the integer kernels ORT's optimized graph holds."""
    _deploy_extra()
    from quantface.deploy.onnx_export import export_onnx, onnx_bytes
    from quantface.deploy.runtime import integer_ops, optimized_ops
    from quantface.io import atomic_write_text
    from quantface.models.checkpoint import load_bundle

    enter_stage("load model")
    model, layout, meta = load_bundle(args.model)
    enter_stage("export onnx")
    info = export_onnx(model, args.out, flavor=args.flavor)
    enter_stage("load in onnxruntime")  # a graph ORT cannot run fails here, naming the operator
    ops = optimized_ops(args.out, args.threads or 1)
    report = {
        "model": model.name,
        "method": meta.get("method", "fp") if layout else "fp",
        "bits": meta.get("bits", "fp32") if layout else "fp32",
        "onnx_bytes": onnx_bytes(args.out),
        "flavor": args.flavor,
        "paths": info["paths"],
        "exported_ops": info["nodes"],
        "ort_integer_ops": integer_ops(ops),
        "sites": info["sites"],
    }
    if args.verify:  # the engine must reproduce the simulation (module docstring of bench)
        from quantface.deploy.bench import bench

        enter_stage("verify")
        check = bench(args.model, args.out, threads=args.threads or 1, warmup=0, runs=1)
        report["psnr_vs_sim"] = check["psnr_vs_sim"]
        a_bits = min((lq.a.bits for lq in layout.values()), default=8)
        bound = VERIFY_PSNR if a_bits >= 8 else VERIFY_PSNR_LOW_BITS
        if check["psnr_vs_sim"] < bound:
            raise QuantFaceError(
                f"{args.out} reproduces {args.model} at only {check['psnr_vs_sim']:.1f} dB "
                f"PSNR in ONNX Runtime (at least {bound} expected)"
            )
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=1))
    log.info(
        "onnx %s: %s; ORT integer kernels %s", args.out, info["paths"], report["ort_integer_ops"]
    )


# ORT vs the fake-quant simulation on the same faces. Each site alone agrees to ~1e-6 relative
# (tests/test_deploy.py); end to end a value on a rounding tie may flip a code between the two
# float summation orders and move later layers by one step, 16x larger at 4 bits than at 8
# (tiny 128 px, W4A4: 26.6 dB measured with every site exact)
VERIFY_PSNR = 30.0  # activations at 8 bits
VERIFY_PSNR_LOW_BITS = 20.0  # any activation below 8 bits


def cmd_deploy_bench(args: argparse.Namespace) -> None:
    _deploy_extra()
    from quantface.deploy.bench import bench
    from quantface.io import atomic_write_text

    enter_stage("benchmark")
    result = bench(
        args.model,
        args.onnx,
        fp=args.fp,
        images=args.images,
        n_images=args.n_images,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        seed=args.seed,
    )
    atomic_write_text(args.out, json.dumps(result, indent=1))
    for row in result["rows"]:
        log.info(
            "%s: %.1f ms median, peak +%.0f MB", row["engine"], row["median_ms"], row["peak_mb"]
        )


def cmd_deploy_trt(args: argparse.Namespace) -> None:
    """A `--flavor qdq` ONNX as a TensorRT engine: its layout checked here first (any machine),
    then built and timed on the GPU (quantface/deploy/tensorrt.py)."""
    _deploy_extra()
    from quantface.deploy.tensorrt import build_engine, check_layout, time_engine
    from quantface.io import atomic_write_text

    enter_stage("check layout")
    layout = check_layout(args.onnx)
    log.info("TensorRT layout: %s", ", ".join(f"{k} {v}" for k, v in layout.items()))
    enter_stage("build engine")
    report = build_engine(args.onnx, args.out, workspace_gib=args.workspace_gib)
    enter_stage("time engine")
    report["timing"] = time_engine(args.out, warmup=args.warmup, runs=args.runs)
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=1))
    log.info("%s: %.2f ms median", report["timing"]["engine"], report["timing"]["median_ms"])


def cmd_deploy_report(args: argparse.Namespace) -> None:
    from quantface.report.deploy import write_deploy_report

    write_deploy_report([Path(p) for p in args.bench], Path(args.out), Path(args.figure))


def cmd_restore(args: argparse.Namespace) -> None:
    from quantface.api import restore

    enter_stage("restore")
    if args.whole:
        from quantface.api import restore_photos

        restore_photos(
            args.model,
            args.input,
            args.output,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            device=args.device,
        )
        return
    restore(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        keep_size=args.keep_size,
        overwrite=args.overwrite,
        device=args.device,
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from quantface.compare import compare_photos

    enter_stage("compare")
    compare_photos(args.input, args.models, args.out, cell=args.cell, device=args.device)


def _labels(args: argparse.Namespace) -> dict[str, Any]:
    """The metrics rows' labels, from the flags `evaluate` and `restore-evaluate` share."""
    return {"model": args.model_name, "method": args.method, "bits": args.bits, "seed": args.seed}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from quantface.api import evaluate

    evaluate(
        args.pred,
        [m for m in args.metrics.split(",") if m],
        out=args.out,
        ref=args.ref,
        fp=args.fp,
        labels={**_labels(args), "dataset": args.dataset},
        weights_dir=args.weights_dir,
        batch_size=args.batch_size,
        manifest=args.manifest,
        device=args.device,
    )


def cmd_restore_evaluate(args: argparse.Namespace) -> None:
    from quantface.cell import parse_sets, restore_and_evaluate

    restore_and_evaluate(
        Path(args.model) if args.model else None,
        parse_sets(args.sets),
        labels=_labels(args),
        weights_dir=Path(args.weights_dir),
        restore_batch=args.batch_size,
        metric_batch=args.metric_batch_size,
        device=args.device,
    )


def cmd_aggregate(args: argparse.Namespace) -> None:
    from quantface.report.aggregate import (
        aggregate_costs,
        aggregate_exports,
        aggregate_metrics,
        aggregate_per_image,
    )

    if args.metrics:
        aggregate_metrics([Path(p) for p in args.metrics], Path(args.out))
    if args.per_image:
        aggregate_per_image([Path(p) for p in args.per_image], Path(args.per_image_out))
    if args.costs:
        aggregate_costs([Path(p) for p in args.costs], Path(args.cost_out))
    if args.exports:
        aggregate_exports([Path(p) for p in args.exports], Path(args.export_out))


def cmd_tables(args: argparse.Namespace) -> None:
    from quantface.report.tables import write_tables

    write_tables(
        [Path(p) for p in args.metrics],
        [Path(p) for p in args.cost],
        Path(args.out),
        per_image=[Path(p) for p in args.per_image],
        seed=args.seed,
        synthetic=args.synthetic.split(",") if args.synthetic is not None else None,
        realworld=args.realworld.split(",") if args.realworld is not None else None,
        footnote=args.footnote or [],
        ablation=args.ablation.split(",") if args.ablation else None,
        ablation_reference=args.ablation_reference.split(",") if args.ablation_reference else [],
    )


def cmd_figures(args: argparse.Namespace) -> None:
    from quantface.report.figures import write_figures

    plans = {}
    for item in args.plan:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"--plan '{item}': expected LABEL=path/to/plan.json")
        plans[label] = Path(path)
    write_figures(
        [Path(p) for p in args.metrics],
        Path(args.out),
        qualitative=_json(args.qualitative),
        cost=[Path(p) for p in args.cost],
        calib=Path(args.calib) if args.calib else None,
        calib_after=Path(args.calib_after) if args.calib_after else None,
        plans=plans,
        per_image=[Path(p) for p in args.per_image],
        seed=args.seed,
    )


def cmd_list(registry_name: str):
    def run(args: argparse.Namespace) -> None:
        from quantface import registry

        reg = getattr(registry, registry_name)
        for name, doc in reg.describe().items():
            print(f"{name:22s} {doc}")

    return run


WEIGHTS = "folder of the metric networks' weights"


# --- parser ------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, so `--help` alone tells what a run without the
    flag does; left out where there is nothing to show (no default, an off switch, an empty
    list) or where the help already says the default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or (isinstance(d, str | list) and not d) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantface", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"quantface {_package_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.set_defaults(func=func)
        return sp

    def timing(sp: argparse.ArgumentParser) -> None:
        """The engine benchmarks' run counts (deploy-bench, deploy-trt)."""
        sp.add_argument("--warmup", type=int, default=3, help="untimed runs first")
        sp.add_argument("--runs", type=int, default=10, help="timed runs (median and quartiles)")

    def common(sp: argparse.ArgumentParser, seed: bool = True) -> None:
        if seed:
            sp.add_argument(
                "--seed", type=int, default=0, help="seed of the global RNGs and seeded draws"
            )
        sp.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch intra-op threads (default: torch's own)",
        )
        device_option(sp)

    def device_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--device",
            default="auto",
            help="where models, metrics and the aligner compute: auto (CUDA when available, "
            "else CPU), cpu, cuda or cuda:N (default: auto)",
        )

    def label_options(sp: argparse.ArgumentParser) -> None:
        for flag, what in (("--model-name", "model"), ("--method", "method"), ("--bits", "bits")):
            sp.add_argument(flag, default="", help=f"{what} label of the metrics rows")

    sp = add("check-config", cmd_check_config, "validate workflow config files (as snakemake does)")
    sp.add_argument("config", nargs="+", help="YAML files, later ones merged onto earlier ones")

    sp = add("prepare-data", cmd_prepare_data, "write a dataset folder (lq/, hq/, manifest.json)")
    sp.add_argument("--dataset", required=True, help="registered dataset name")
    sp.add_argument("--out", required=True, help="dataset folder to write")
    sp.add_argument("--options", help="JSON: n_images, image_size, degradation")
    common(sp)

    sp = add("train", cmd_train, "train a restorer (the embedded tiny model) and save it")
    sp.add_argument("--model", default="tiny", help="registered model name")
    sp.add_argument("--out", required=True, help="model.pt to write")
    sp.add_argument("--options", help="JSON: {arch: {...}, train: {...}, degradation: {...}}")
    common(sp)

    sp = add(
        "prepare-model",
        cmd_prepare_model,
        "the study's FP model: convert local weights (osdface) or train (tiny)",
    )
    sp.add_argument("--model", default="tiny", help="registered model name")
    sp.add_argument("--out", required=True, help="model.pt to write")
    sp.add_argument(
        "--options", help="JSON: {arch, assets (local weight paths), train, degradation}"
    )
    common(sp)

    sp = add("pretrain-vae", cmd_pretrain_vae, "pretrain the tiny model's VAE (the shipped asset)")
    sp.add_argument("--out", required=True, help="a .safetensors file")
    sp.add_argument("--steps", type=int, default=2400, help="VAE training steps")
    sp.add_argument("--options", help="JSON: {arch: {...}} overrides of the tiny architecture")
    common(sp)

    sp = add("calibrate", cmd_calibrate, "collect and cache calibration activation statistics")
    sp.add_argument("--model", required=True, help="the FP model.pt")
    sp.add_argument("--out", required=True, help="activations.pt to write")
    sp.add_argument(
        "--images", help="folder of LQ calibration images (default: degraded synthetic faces)"
    )
    sp.add_argument("--degradation", help="JSON degradation ranges for the synthetic LQ faces")
    sp.add_argument(
        "--balanced",
        metavar="CALIB",
        help="instead: the statistics after QuantFace's balancing fitted to this calibration "
        "file, on its images (the activation-distribution figure's second row)",
    )
    sp.add_argument("--options", help="JSON QuantFace options for --balanced (balancing, alpha)")
    sp.add_argument("--n-images", type=int, default=32, help="calibration images")
    sp.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    sp.add_argument("--sample-rows", type=int, default=512, help="activation rows kept per site")
    common(sp)

    sp = add("quantize", cmd_quantize, "quantize an FP model with a method at a bit setting")
    sp.add_argument("--model", required=True, help="the FP model.pt")
    sp.add_argument("--method", required=True, help="registered method name")
    sp.add_argument("--bits", required=True, help="wXaY (e.g. w4a4) or mpX")
    sp.add_argument("--calib", required=True, help="activations.pt of `calibrate` on --model")
    sp.add_argument("--out", required=True, help="output folder (model.pt, plan.json, cost.json)")
    sp.add_argument("--options", help="JSON method options")
    sp.add_argument(
        "--scheme",
        help="JSON quantizer scheme replacing the method's own (the matched protocol), e.g. "
        '\'{"act_granularity": "tensor"}\'; keys: quantface/quant/scheme.py',
    )
    sp.add_argument(
        "--label", help="the result's name in cost.json and the tables (default: the method)"
    )
    common(sp)

    sp = add("cost", cmd_cost, "cost accounting of a saved model (cost.json)")
    sp.add_argument("--model", required=True, help="an FP or quantized model.pt")
    sp.add_argument("--out", required=True, help="cost.json to write")
    device_option(sp)

    sp = add(
        "export",
        cmd_export,
        "write a quantized model as a packed low-bit safetensors file or an ONNX graph",
    )
    sp.add_argument("--model", required=True, help="a quantized model.pt (onnx: or an FP one)")
    sp.add_argument(
        "--format",
        choices=("packed", "onnx"),
        default="packed",
        help="packed: low-bit safetensors; onnx: the restore graph with integer operators, "
        "built and checked on the CPU whatever --device says (ONNX Runtime's CPU EP)",
    )
    sp.add_argument(
        "--flavor",
        choices=("ort", "qdq"),
        default="ort",
        help="onnx: ort = integer operators ONNX Runtime's CPU EP runs; qdq = Q/DQ pairs in "
        "the layout TensorRT fuses (symmetric int8 sites)",
    )
    sp.add_argument("--out", required=True, help="the .safetensors / .onnx file")
    sp.add_argument(
        "--report", help="packed (required): size.json; onnx: which sites run in integers"
    )
    sp.add_argument(
        "--verify",
        action="store_true",
        help=f"packed: reload, check bit-identical outputs; onnx: >= {VERIFY_PSNR:g} dB in ORT "
        f"({VERIFY_PSNR_LOW_BITS:g} dB below 8-bit activations)",
    )
    common(sp)

    sp = add(
        "deploy-bench",
        cmd_deploy_bench,
        "time an exported ONNX model in ONNX Runtime (CPU) and check it against the simulation",
    )
    sp.add_argument("--model", required=True, help="the model.pt the ONNX file was exported from")
    sp.add_argument("--onnx", required=True, help="the ONNX file `export --format onnx` wrote")
    sp.add_argument("--out", required=True, help="bench.json")
    sp.add_argument("--fp", help="the FP model.pt: PSNR-FP of the engine's output")
    sp.add_argument("--images", help="LQ face folder (default: seeded noise images)")
    sp.add_argument("--n-images", type=int, default=2, help="faces the agreement is measured on")
    timing(sp)
    sp.add_argument("--seed", type=int, default=0, help="noise faces when --images is not given")
    sp.add_argument("--threads", type=int, default=1, help="intra-op threads of ORT and torch")

    sp = add(
        "deploy-trt",
        cmd_deploy_trt,
        "build a `--flavor qdq` ONNX into a TensorRT engine and time it (needs a CUDA GPU)",
    )
    sp.add_argument("--onnx", required=True, help="the ONNX file `export --flavor qdq` wrote")
    sp.add_argument("--out", required=True, help="the serialized engine (.engine)")
    sp.add_argument("--report", help="trt.json: the layout counts, versions and timing")
    sp.add_argument("--workspace-gib", type=int, default=8, help="TensorRT's workspace limit")
    timing(sp)

    sp = add(
        "deploy-report", cmd_deploy_report, "deploy table (md, csv) and quality-vs-latency figure"
    )
    sp.add_argument("--bench", required=True, nargs="+", help="bench.json files of deploy-bench")
    sp.add_argument("--out", required=True, help="folder of deploy.md and deploy.csv")
    sp.add_argument("--figure", required=True, help="the figure (.png)")

    sp = add("restore", cmd_restore, "restore a folder of face images (or of whole photos)")
    sp.add_argument("--model", required=True, help="an FP or quantized model.pt")
    sp.add_argument(
        "--input", required=True, help="a folder of images (with --whole: or one photo)"
    )
    sp.add_argument(
        "--output",
        required=True,
        help="folder for the restored PNGs (not the input folder nor inside it)",
    )
    sp.add_argument(
        "--whole",
        action="store_true",
        help="inputs are whole photos of any shape: detect every face (MTCNN, the faces "
        "extra), restore each aligned face, paste it back; also writes cropped_faces/, "
        "restored_faces/ and faces.json (off: inputs are square aligned faces)",
    )
    sp.add_argument(
        "--batch-size", type=int, default=8, help="images (with --whole: faces) per forward pass"
    )
    sp.add_argument(
        "--keep-size",
        action="store_true",
        help="write each output at its input's size (default: the model's size; --whole "
        "always keeps the photo's size)",
    )
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds other files, beside them (they are never replaced)",
    )
    common(sp, seed=False)

    sp = add(
        "compare", cmd_compare, "side-by-side grid of whole photos: input | each model's output"
    )
    sp.add_argument("--input", required=True, nargs="+", help="photo files, one row each")
    sp.add_argument(
        "--models", required=True, nargs="+", help="FP and/or quantized model.pt, one column each"
    )
    sp.add_argument("--out", required=True, help="the grid PNG")
    sp.add_argument("--cell", type=int, default=256, help="side of each square cell in px")
    common(sp, seed=False)

    sp = add("evaluate", cmd_evaluate, "score restored images (long-format metrics CSV)")
    sp.add_argument("--pred", required=True, help="folder of restored images to score")
    sp.add_argument("--ref", help="HQ folder (full-reference metrics)")
    sp.add_argument("--fp", help="FP model output folder (fidelity metrics)")
    sp.add_argument("--metrics", required=True, help="comma-separated metric names")
    sp.add_argument("--out", required=True, help="metrics CSV to write")
    sp.add_argument("--manifest", help="dataset manifest.json: --pred must hold exactly its images")
    sp.add_argument("--weights-dir", default=os.path.join("results", ".weights"), help=WEIGHTS)
    sp.add_argument("--batch-size", type=int, default=8, help="images per metric batch")
    label_options(sp)
    sp.add_argument("--dataset", default="", help="dataset label of the rows")
    common(sp)

    sp = add(
        "restore-evaluate",
        cmd_restore_evaluate,
        "restore and score several test sets with one model in one process (the workflow's job)",
    )
    sp.add_argument("--model", help="model file; without it the inputs themselves are scored")
    sp.add_argument(
        "--sets",
        required=True,
        help="JSON list of {dataset, lq, manifest, metrics_out, metrics, images, hq, fp}",
    )
    sp.add_argument("--weights-dir", default=os.path.join("results", ".weights"), help=WEIGHTS)
    sp.add_argument("--batch-size", type=int, default=8, help="restoration batch")
    sp.add_argument("--metric-batch-size", type=int, default=8, help="images per metric batch")
    label_options(sp)
    common(sp)

    sp = add("aggregate", cmd_aggregate, "merge per-job metrics CSVs / cost.json files")
    sp.add_argument("--metrics", nargs="*", default=[], help="per-job metrics CSVs")
    sp.add_argument("--out", help="merged metrics CSV to write")
    sp.add_argument("--per-image", nargs="*", default=[], help="per-image score CSVs")
    sp.add_argument("--per-image-out", help="merged per-image CSV to write")
    sp.add_argument("--costs", nargs="*", default=[], help="cost.json files of `quantize`/`cost`")
    sp.add_argument("--cost-out", help="cost CSV to write")
    sp.add_argument("--exports", nargs="*", default=[], help="size.json files of `export`")
    sp.add_argument("--export-out", help="CSV of bytes on disk vs the cost model")

    sp = add("tables", cmd_tables, "paper-style tables from results/metrics.csv")
    sp.add_argument(
        "--metrics", required=True, nargs="+", help="metrics CSVs (several = merged shards)"
    )
    sp.add_argument("--cost", nargs="*", default=[], help="cost CSVs (several = merged shards)")
    sp.add_argument(
        "--per-image",
        nargs="*",
        default=[],
        help="per-image scores (metrics_per_image.csv): 95%% bootstrap intervals and ties",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    sp.add_argument("--out", default=os.path.join("results", "tables"), help="folder to write")
    sp.add_argument(
        "--synthetic", help="comma-separated datasets for Table 1 (default: paired ones)"
    )
    sp.add_argument(
        "--realworld", help="comma-separated datasets for Table 3 (default: the others)"
    )
    sp.add_argument("--footnote", action="append", help="a footnote line (repeatable)")
    sp.add_argument(
        "--ablation", help="comma-separated ablation variants (own table, not in Tables 1/3)"
    )
    sp.add_argument(
        "--ablation-reference", help="comma-separated methods also shown in the ablation table"
    )

    sp = add("figures", cmd_figures, "figures from results/metrics.csv (and restored images)")
    sp.add_argument("--metrics", required=True, nargs="+", help="metrics CSVs (merged)")
    sp.add_argument(
        "--per-image", nargs="*", default=[], help="per-image scores: 95%% intervals as error bars"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    sp.add_argument("--out", default=os.path.join("results", "figures"), help="folder to write")
    sp.add_argument("--cost", nargs="*", default=[], help="cost CSVs: quality-vs-cost plots")
    sp.add_argument("--calib", help="calibration statistics: activation-distribution plot")
    sp.add_argument("--calib-after", help="statistics after a balancing transform (optional)")
    sp.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="LABEL=PLAN_JSON",
        help="a plan.json for the per-layer bit-width map (repeatable)",
    )
    sp.add_argument("--qualitative", help="JSON: {dataset, bits, n_images, columns: [...]}")

    for name, reg in (
        ("methods", "METHODS"),
        ("metrics", "METRICS"),
        ("datasets", "DATASETS"),
        ("models", "MODELS"),
    ):
        add(name, cmd_list(reg), f"list the registered {name}")
    return p


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (Snakemake on Ctrl-C, SLURM at the time limit) unwinds like an error, so every
    `atomic_*` writer deletes its temp file; Python's default would exit without cleanup."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a process of its own: a workflow's warm fork server may run it instead
        from quantface.forkserver import run_remote

        code = run_remote(sys.argv[1:])
        if code is not None:
            return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    t0 = time.perf_counter()
    enter_stage("setup")
    try:
        check_outputs(args)
        if args.command in LISTINGS:
            args.func(args)
        else:
            with memory_guard(args.command):
                _setup(args)
                args.func(args)
            record_outputs(args)
    except QuantFaceError as e:
        print(f"quantface {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(
            f"quantface {args.command}: error: cannot write {e.filename}: {e.strerror}",
            file=sys.stderr,
        )
        return 2
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        print(
            f"quantface {args.command}: error: out of memory in stage '{current_stage()}' "
            f"({peak_memory()}); lower the batch size or the image count, or use a larger device",
            file=sys.stderr,
        )
        return 1
    except OSError as e:  # a full disk outside the atomic writers (mkdtemp, a log file)
        from quantface.io import disk_full_error

        full = disk_full_error(e, Path(e.filename or "."))
        if full is None:
            raise
        print(f"quantface {args.command}: error: {full}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.command not in LISTINGS:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)  # a fork server's child: its own
        log.info(
            "%s done in %.1f s (CPU %.1f s, peak RSS %.2f GiB)",
            args.command,
            time.perf_counter() - t0,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 2**20,  # Linux: KiB
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
