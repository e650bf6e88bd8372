"""FP32 vs fake-quant vs real integer kernels on this CPU: per layer type, the whole tiny restorer,
peak memory, size on disk, and the calibration wall time of every method.

    PYTHONPATH=. python benchmarks/speed.py [--threads 1] [--repeats 7]

Times are medians over `--repeats` runs after one warm-up, batch 1, `--threads` torch threads
(1 by default: a shared 2-core machine gives noisy multi-thread numbers). Ratios are FP32 time
over the variant's time (> 1: faster than FP32). Kernels, all in torch itself:
- real W8A8 / W4A4: `torch._int_mm` (int8 x int8 -> int32); 4-bit codes run in int8 containers,
  since torch has no int4 x int4 GEMM on CPU (quant/intkernels.py);
- "int8 GEMM only": `_int_mm` on codes already quantized, i.e. without the eager-mode quantize
  and dequantize passes a deployment fuses into neighbouring ops;
- W8A16 `aten._weight_int8pack_mm`, W4A16 `aten._weight_int4pack_mm_for_cpu`: weight-only
  kernels (float activations), shown for reference;
- W4A8 `aten._dyn_quant_matmul_4bit` (KleidiAI, Arm): probed, its error printed if it fails.
Peak memory is the max RSS of a fresh process that loads the model and restores 3 images.
Calibration wall times come from the `benchmark:` files Snakemake writes for `quantize` jobs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from quantface.methods.pipeline import quantize_bundle
from quantface.models.checkpoint import load_bundle, save_bundle
from quantface.quant.apply import calibrate_weights, current_layout, plan_of
from quantface.quant.calibration import collect_calibration
from quantface.quant.cost import cost_table
from quantface.quant.intkernels import IntConv2d, IntLinear, convert_to_int, int_bmm
from quantface.quant.layers import QuantConv2d, QuantLinear
from quantface.quant.pack import export_bundle, load_packed
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec, UniformQuantizer
from quantface.quant.specs import LayerQuant


def timed(fn, repeats: int) -> float:
    with torch.no_grad():
        fn()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _row(name: str, fp: float, variants: dict[str, float | str]) -> None:
    cells = [f"{name:34s} FP32 {fp * 1e3:8.2f} ms"]
    for k, v in variants.items():
        cells.append(
            f"{k} {v}" if isinstance(v, str) else f"{k} {v * 1e3:8.2f} ms ({fp / v:4.2f}x)"
        )
    print(" | ".join(cells))


def _quant_layer(layer: nn.Module, bits: int, x: torch.Tensor) -> nn.Module:
    kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
    a = QuantSpec(bits, channel_dim=-1 if kind == "linear" else 1)
    lq = LayerQuant(kind, a, QuantSpec(bits, granularity="channel"))
    q = (QuantLinear if kind == "linear" else QuantConv2d).from_float(layer, lq)
    calibrate_weights(q)
    q.act_quantizer.set_range(x.min(), x.max())
    return q


def _fake_and_int(
    layer: nn.Module, int_cls: type, x: torch.Tensor, repeats: int, suffix: str
) -> tuple[dict[str, float | str], nn.Module]:
    """Fake-quant and real-int timings at W8A8 and W4A4; returns them and the W4A4 int layer."""
    v: dict[str, float | str] = {}
    for bits in (8, 4):
        q = _quant_layer(copy.deepcopy(layer), bits, x)
        v[f"fake W{bits}A{bits}"] = timed(lambda q=q: q(x), repeats)
        iq = int_cls(q)
        v[f"int W{bits}A{bits}{suffix}"] = timed(lambda iq=iq: iq(x), repeats)
    return v, iq


def linear_row(tokens: int, c_in: int, c_out: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, c_in, generator=g)
    lin = nn.Linear(c_in, c_out)
    fp = timed(lambda: lin(x), repeats)
    v, iq = _fake_and_int(lin, IntLinear, x, repeats, "")
    codes = iq._codes(x)[0]  # the GEMM alone, on codes already in int8 (kernel speed)
    v["int8 GEMM only"] = timed(lambda: torch._int_mm(codes, iq.w_t), repeats)
    w8 = torch.randint(-128, 127, (c_out, c_in), dtype=torch.int8)
    s = torch.rand(c_out)
    v["W8A16"] = timed(lambda: torch.ops.aten._weight_int8pack_mm(x, w8, s), repeats)
    w4 = torch.randint(0, 16, (c_out, c_in), dtype=torch.int32)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w4, 1)
        sz = torch.rand(c_in // 32, c_out, 2)
        v["W4A16"] = timed(
            lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz), repeats
        )
    except RuntimeError as e:
        v["W4A16"] = f"unavailable ({str(e).splitlines()[0][:60]})"
    _row(f"Linear {tokens}x{c_in}->{c_out}", fp, v)


def conv_row(c_in: int, c_out: int, side: int, repeats: int) -> None:
    x = torch.randn(1, c_in, side, side, generator=torch.Generator().manual_seed(0))
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    fp = timed(lambda: conv(x), repeats)
    v, _ = _fake_and_int(conv, IntConv2d, x, repeats, " (im2col)")
    _row(f"Conv2d 3x3 {c_in}->{c_out} @{side}x{side}", fp, v)


def matmul_row(batch: int, n: int, d: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(batch, n, d, generator=g), torch.randn(batch, d, n, generator=g)
    fp = timed(lambda: torch.bmm(q, k), repeats)
    v: dict[str, float | str] = {}
    for bits in (8, 4):
        qa, qb = UniformQuantizer(QuantSpec(bits)), UniformQuantizer(QuantSpec(bits))
        qa.set_range(q.min(), q.max())
        qb.set_range(k.min(), k.max())
        v[f"fake A{bits}A{bits}"] = timed(lambda qa=qa, qb=qb: torch.bmm(qa(q), qb(k)), repeats)
        v[f"int A{bits}A{bits}"] = timed(lambda qa=qa, qb=qb: int_bmm(q, k, qa, qb), repeats)
    _row(f"attention QK^T {batch}x{n}x{d}x{n}", fp, v)


def probe_w4a8() -> str:
    k, n, bs = 256, 128, 32
    try:
        w = torch.randint(0, 16, (n, k), dtype=torch.uint8)
        p = torch.ops.aten._dyn_quant_pack_4bit_weight(w, torch.rand(n, k // bs), None, bs, k, n)
        torch.ops.aten._dyn_quant_matmul_4bit(torch.randn(4, k), p, bs, k, n)
        return "runs"
    except (RuntimeError, AttributeError) as e:
        return f"fails here: {type(e).__name__}: {str(e).splitlines()[0]}"


# --- the whole tiny restorer --------------------------------------------------------------------
def child(path: str, variant: str, repeats: int, threads: int) -> None:
    """Fresh process: load, (convert), restore; print latency and peak RSS as JSON."""
    torch.set_num_threads(threads)
    model = load_packed(path)[0] if path.endswith(".safetensors") else load_bundle(path)[0]
    skipped = convert_to_int(model) if variant == "int" else {}
    s = model.image_size
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    sec = timed(lambda: model.restore(x), repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": sec, "peak_rss": rss, "skipped": len(skipped)}))


def run_child(path: Path, variant: str, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), variant, str(repeats), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1 / mse)).item()


def whole_model(repeats: int, threads: int) -> None:
    from quantface.models.tiny import TinyRestorer

    fp_path = Path("results/tiny/fp/model.pt")
    fp = load_bundle(fp_path)[0] if fp_path.is_file() else TinyRestorer().eval()
    src = str(fp_path) if fp_path.is_file() else "untrained default tiny architecture"
    s = fp.image_size
    images = torch.rand(8, 3, s, s, generator=torch.Generator().manual_seed(1))
    calib = collect_calibration(copy.deepcopy(fp), images, 4, 64)
    print(f"\n## Whole tiny restorer ({src}, {s} px, batch 1, {threads} thread(s))\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_bundle(fp, tmp / "fp.pt")
        base = run_child(tmp / "fp.pt", "fake", repeats, threads)
        fp_bytes = (tmp / "fp.pt").stat().st_size
        print(
            f"FP32: {base['seconds'] * 1e3:.1f} ms, peak RSS {base['peak_rss'] / 2**20:.0f} MiB,"
            f" model.pt {fp_bytes / 1e6:.3f} MB"
        )
        x = images[:2]
        with torch.no_grad():
            ref = fp.restore(x)
        for bits in (8, 4):
            plan = BitPlan.uniform(fp.quant_targets(), bits, bits)
            q = quantize_bundle("maxmin", fp, calib, plan, {}).model
            save_bundle(q, tmp / "q.pt", layout=current_layout(q))
            sizes = export_bundle(q, current_layout(q), tmp / "q.safetensors")
            cost = cost_table(q, plan_of(q))["total"]
            fake = run_child(tmp / "q.pt", "fake", repeats, threads)
            real = run_child(tmp / "q.safetensors", "int", repeats, threads)
            qi = copy.deepcopy(q)
            skipped = convert_to_int(qi)
            with torch.no_grad():
                out_fake, out_int = q.restore(x), qi.restore(x)
            f, r = fake["seconds"], real["seconds"]
            print(
                f"W{bits}A{bits} (maxmin): fake-quant {f * 1e3:.1f} ms ({base['seconds'] / f:.2f}x "
                f"of FP32), real-int {r * 1e3:.1f} ms ({base['seconds'] / r:.2f}x of FP32, "
                f"{f / r:.2f}x of fake), {len(skipped)} layers left simulated; peak RSS fake "
                f"{fake['peak_rss'] / 2**20:.0f} MiB, int {real['peak_rss'] / 2**20:.0f} MiB"
            )
            print(
                f"  agreement: PSNR(int, fake) {psnr(out_int, out_fake):.1f} dB, PSNR(fake, FP32) "
                f"{psnr(out_fake, ref):.1f} dB (the attention matmuls stay fake-quant)"
            )
            naive = cost["fp32_param_bits"] / 8 * bits / 32
            print(
                f"  size: simulation model.pt {(tmp / 'q.pt').stat().st_size / 1e6:.3f} MB, "
                f"packed {sizes['file'] / 1e6:.3f} MB = {sizes['file'] / fp_bytes:.3f} of FP32 "
                f"model.pt; cost model {cost['size_bytes'] / 1e6:.3f} MB (disk/cost "
                f"{sizes['file'] / cost['size_bytes']:.4f}); every parameter at {bits}/32: "
                f"{naive / 1e6:.3f} MB (the FP embedder, biases and scales stay 32-bit)"
            )


def calibration_times() -> None:
    print("\n## Calibration wall time per method (Snakemake `benchmark:` files)\n")
    files = sorted(Path("results/benchmarks/quantize").glob("*/*/*.tsv"))
    if not files:
        print(
            "No results/benchmarks/quantize/<model>/<method>/<bits>.tsv here: run "
            "`snakemake --cores all` first (each quantize job writes one; `s` = wall seconds)."
        )
        return
    for f in files:
        with f.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        model, method, bits = f.parts[-3], f.parts[-2], f.stem
        print(
            f"{model:8s} {method:14s} {bits:6s} {float(row['s']):8.1f} s  max RSS {row['max_rss']} MB"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"W4A8 _dyn_quant_matmul_4bit: {probe_w4a8()}")
    print("\n## Per layer type (ratios: FP32 time / variant time)\n")
    for shape in ((256, 64, 64), (1024, 640, 640), (4096, 320, 320)):
        linear_row(*shape, args.repeats)
    for shape in ((64, 64, 32), (320, 320, 32)):
        conv_row(*shape, args.repeats)
    matmul_row(8, 1024, 64, args.repeats)
    whole_model(args.repeats, args.threads)
    calibration_times()


if __name__ == "__main__":
    main()
