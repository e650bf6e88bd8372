"""The deploy table (deploy.md, deploy.csv) and the quality-vs-measured-latency figure.

One row per engine run of `quantface deploy-bench`: torch FP32 and ORT FP32 from the FP model,
then every quantized model in ORT on the CPU. Latency is the median of the timed runs with the
quartiles beside it, speed-ups are against ORT FP32 (the same engine) and torch FP32 (what the
suite's simulation runs on); agreement is the engine's PSNR against the fake-quant simulation,
quality its PSNR against the FP model. The footer names the engine versions, the machine, the
threads, warm-up and runs, and that the machine was shared, so nobody reads more into the
numbers than they hold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from quantface.deploy.runtime import SHARED_NOTE
from quantface.errors import DataError
from quantface.io import atomic_path, atomic_write_text

COLUMNS = [
    "model",
    "method",
    "bits",
    "engine",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "vs_ort_fp32",
    "vs_torch_fp32",
    "peak_mb",
    "onnx_mb",
    "psnr_vs_sim",
    "psnr_fp",
    "integer_sites",
    "float_sites",
    "integer_ops",
]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data["rows"], list):
            raise TypeError("'rows' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a bench.json of `quantface deploy-bench` ({e})") from e
    return data


def deploy_frame(benches: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per engine run, speed-ups against the FP32 rows of the same model and size."""
    rows = []
    for b in benches:
        sites = b.get("sites", {})
        n_float = sum(v for k, v in sites.items() if k.startswith("float"))
        for r in b["rows"]:
            rows.append(
                {
                    "model": f"{b['model']} {b['image_size']}px",
                    "method": b["method"],
                    "bits": b["bits"],
                    "engine": r["engine"],
                    "median_ms": r["median_ms"],
                    "q1_ms": r["q1_ms"],
                    "q3_ms": r["q3_ms"],
                    "peak_mb": r["peak_mb"],
                    "onnx_mb": b["onnx_bytes"] / 2**20 if r["engine"] != "torch FP32" else math.nan,
                    "psnr_vs_sim": b["psnr_vs_sim"] if r["engine"] != "torch FP32" else math.nan,
                    "psnr_fp": b.get("psnr_fp", math.nan) if b["method"] != "fp" else math.inf,
                    "integer_sites": sum(sites.values()) - n_float,
                    "float_sites": n_float,
                    "integer_ops": " ".join(f"{k}:{v}" for k, v in b["integer_ops"].items()),
                }
            )
    df = pd.DataFrame(
        rows, columns=[c for c in COLUMNS if c not in ("vs_ort_fp32", "vs_torch_fp32")]
    )
    for engine, col in (("ORT FP32", "vs_ort_fp32"), ("torch FP32", "vs_torch_fp32")):
        ref = df[df.engine == engine].groupby("model").median_ms.first()
        df[col] = df.model.map(ref) / df.median_ms
    order = {"torch FP32": 0, "ORT FP32": 1}
    df["_o"] = df.engine.map(order).fillna(2)
    return df.sort_values(["model", "_o", "bits", "method"]).drop(columns="_o")[COLUMNS]


def _num(v: float, fmt: str) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, fmt)


def to_markdown(df: pd.DataFrame, notes: list[str]) -> str:
    head = (
        "| model | method | bits | engine | latency ms (median [q1, q3]) | × ORT FP32 | "
        "× torch FP32 | peak MB | ONNX MB | PSNR vs sim | PSNR-FP | int / float sites |"
    )
    lines = ["# Deployment: ONNX Runtime (CPU) latency, memory and agreement", "", head]
    lines.append("|" + "---|" * 12)
    for r in df.itertuples():
        lat = f"{r.median_ms:.1f} [{r.q1_ms:.1f}, {r.q3_ms:.1f}]"
        lines.append(
            f"| {r.model} | {r.method} | {r.bits} | {r.engine} | {lat} | "
            f"{_num(r.vs_ort_fp32, '.2f')} | {_num(r.vs_torch_fp32, '.2f')} | "
            f"{_num(r.peak_mb, '.0f')} | {_num(r.onnx_mb, '.2f')} | "
            f"{_num(r.psnr_vs_sim, '.1f')} | {_num(r.psnr_fp, '.2f')} | "
            f"{r.integer_sites} / {r.float_sites} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def notes_of(benches: list[dict[str, Any]]) -> list[str]:
    """Versions, machine and settings of the runs (one line each when they all agree)."""
    machines = {json.dumps(b["machine"], sort_keys=True) for b in benches}
    settings = {json.dumps(b["settings"], sort_keys=True) for b in benches}
    notes = []
    for m in sorted(machines):
        d = json.loads(m)
        notes.append(
            f"engines: onnxruntime {d['onnxruntime']} (CPUExecutionProvider), onnx {d['onnx']}, "
            f"torch {d['torch']}; machine: {d['cpu']}, {d['cores']} logical cores, {d['system']}"
        )
    for s in sorted(settings):
        d = json.loads(s)
        notes.append(
            f"{d['threads']} intra-op thread(s), batch {d['batch']} (one face per call), "
            f"{d['warmup']} warm-up runs, then the median and quartiles of {d['runs']} runs"
        )
    notes += [
        SHARED_NOTE,
        (
            "peak MB: peak resident memory above the process's before the engine (or the torch "
            "model) was loaded; PSNR vs sim: the engine's output against the fake-quant torch "
            "output on the same faces; int / float sites: quantized layers the engine runs with "
            "integer kernels / as float fake-quant (quantface/deploy/onnx_export.py)"
        ),
    ]
    return notes


def quality_vs_latency(df: pd.DataFrame, out: Path) -> Path:
    """PSNR-FP against measured median latency, one panel per model size; FP32 as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        d = df[df.model == model]
        for r in d[d.engine.str.contains("FP32")].itertuples():
            ax.axvline(r.median_ms, ls="--", color="grey", lw=1)
            ax.text(
                r.median_ms,
                0.02,
                f" {r.engine}",
                rotation=90,
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color="grey",
            )
        q = d[(d.engine == "ORT int") & d.psnr_fp.notna()]
        for bits, g in q.groupby("bits"):
            ax.errorbar(
                g.median_ms,
                g.psnr_fp,
                xerr=[g.median_ms - g.q1_ms, g.q3_ms - g.median_ms],
                fmt="o",
                label=bits,
                capsize=2,
            )
            for r in g.itertuples():
                ax.annotate(
                    r.method,
                    (r.median_ms, r.psnr_fp),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("median latency per face in ONNX Runtime (ms)")
        ax.set_ylabel("PSNR-FP (dB)")
        ax.set_title(model)
        if len(q):
            ax.legend(fontsize=7)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def write_deploy_report(benches: list[Path], out: Path, figure: Path) -> pd.DataFrame:
    """deploy.md / deploy.csv under `out` and the figure."""
    data = [_load(p) for p in benches]
    df = deploy_frame(data)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "deploy.md", to_markdown(df, notes_of(data)))
    atomic_write_text(out / "deploy.csv", df.to_csv(index=False, float_format="%.4g"))
    figure.parent.mkdir(parents=True, exist_ok=True)
    quality_vs_latency(df, figure)
    return df
