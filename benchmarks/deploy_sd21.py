"""SD-2.1 layer shapes at 512 px (64x64 latent) in ONNX Runtime on the CPU: what each method's
quantized layer form costs where the paper-size model would be deployed. Random weights (speed
does not depend on them).

    PYTHONPATH=. python benchmarks/deploy_sd21.py [--threads 1] [--runs 5] [--out deploy_sd21.md]
    PYTHONPATH=. python benchmarks/deploy_sd21.py --whole-unet [--threads 2] [--runs 3] [--out f.md]

Each layer is built as the suite's quantized layer with a method's native quantizers and
transforms, exported by `quantface.deploy.onnx_export` (the very code `quantface export --format
onnx` runs) and timed in ORT beside the same layer in FP32 (ORT and torch). Forms:
- static asym (MaxMin, Q-Diffusion, PassionSR, EfficientDM): per-tensor activations, per-channel
  asymmetric weights: ConvInteger + the zero-point correction conv / MatMulInteger;
- static sym (SmoothQuant): the same without the correction (one weight zero point);
- per-token + Hadamard (QuaRot): online Hadamard as a constant MatMul / 1x1 conv, per-token
  codes in float, MatMulInteger (a k x k conv has no per-pixel integer form: float);
- per-token + rank-32 branch (SVDQuant): asymmetric per-token codes, FP32 low-rank MatMuls;
- per-token + Hadamard + rank-32 (QuantFace).
W4 weights and A4 activations run the same 8-bit kernels (ORT's CPU EP has no 4-bit activation
or conv kernel), so W4A8/W4A4 latencies equal W8A8 ones; they are not timed separately.

`--whole-unet`: the whole SD-2.1-base UNet (865.9 M parameters, seeded random weights) for one
step at 512 px (64x64 latent, batch 1, 77x1024 text context): torch FP32, ORT FP32 (3.5 GB: its
tensors go to a data file beside the .onnx, see `onnx_export.save_onnx`) and ORT at W8A8 for
MaxMin, whose per-tensor activation ranges come from ONE forward on a random latent (enough
for speed; not a calibration for quality). Each engine's output is compared with its torch
counterpart (ORT FP32 with torch FP32, ORT MaxMin with the torch fake-quant UNet). The torch
model is freed before the quantized session is built, so the peak stays near one model's copies.
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantface.deploy.onnx_export import export_mode, onnx_bytes, save_onnx, site_paths
from quantface.deploy.runtime import SHARED_NOTE, machine, peak_memory, session, time_it
from quantface.io import atomic_write_text
from quantface.models.sd21 import SD21_UNET
from quantface.quant.apply import calibrate_weights, observe_activation_ranges
from quantface.quant.layers import QuantConv2d, QuantLinear, QuantMatMul
from quantface.quant.plan import BitPlan
from quantface.quant.quantizer import QuantSpec
from quantface.quant.scheme import QuantScheme
from quantface.quant.specs import InputTransform, LayerQuant
from quantface.quant.wrap import quant_sites, wrap_model

# (name, kind, in, out, kernel, latent side): SD-2.1's widest-resolution level and its middle
LAYERS = [
    ("conv 3x3 320->320 @64x64", "conv2d", 320, 320, 3, 64),
    ("conv 3x3 1280->1280 @8x8", "conv2d", 1280, 1280, 3, 8),
    ("linear 320->320, 4096 tokens", "linear", 320, 320, 0, 64),
    ("linear 320->2560, 4096 tokens", "linear", 320, 2560, 0, 64),
    ("attention QK^T, 5 heads, 4096 tokens, d 64", "matmul", 64, 4096, 0, 64),
]
FORMS = {
    "static asym (maxmin)": ("tensor", False, False, InputTransform()),
    "static sym (smoothquant)": ("tensor", True, True, InputTransform()),
    "token + Hadamard (quarot)": ("token", True, True, InputTransform(hadamard=True)),
    "token + rank 32 (svdquant)": ("token", False, True, InputTransform(lowrank=32)),
    "token + Hadamard + rank 32 (quantface)": (
        "token",
        False,
        False,
        InputTransform(hadamard=True, lowrank=32),
    ),
}


# QK^T: the operands' quantizers only (transforms belong to the Linear/Conv sites)
MATMUL_FORMS = {
    "static asym (maxmin)": ("tensor", False),
    "static sym (smoothquant)": ("tensor", True),
    "per token (quarot, svdquant, quantface)": ("token", True),
}


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.layer(*xs)


class _Bmm(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b)


def build_matmul(form: str | None) -> nn.Module:
    """QK^T in FP32, or both operands quantized as the method's scheme does (K^T per column)."""
    if form is None:
        return _Bmm()
    gran, a_sym = MATMUL_FORMS[form]
    a = QuantSpec(8, a_sym, gran, dynamic=gran == "token", channel_dim=-1)
    b = QuantSpec(8, a_sym, gran, dynamic=gran == "token", channel_dim=-2)
    q = QuantMatMul(LayerQuant("matmul", a, b))
    if gran == "tensor":
        for quantizer in (q.act_quantizer, q.weight_quantizer):
            quantizer.set_range(torch.tensor(-3.0), torch.tensor(3.0))
    return q.eval()


def build(kind: str, c_in: int, c_out: int, k: int, form: str | None) -> nn.Module:
    """The float layer, or its quantized form with calibrated random-data quantizers."""
    g = torch.Generator().manual_seed(0)
    layer = (
        nn.Conv2d(c_in, c_out, k, padding=k // 2) if kind == "conv2d" else nn.Linear(c_in, c_out)
    )
    with torch.no_grad():
        layer.weight.normal_(0, c_in**-0.5, generator=g)
    if form is None:
        return layer.eval()
    gran, a_sym, w_sym, transform = FORMS[form]
    dim = 1 if kind == "conv2d" else -1
    a = QuantSpec(8, a_sym, gran, dynamic=gran == "token", channel_dim=dim)
    w = QuantSpec(8, w_sym, "channel", channel_dim=0)
    cls = QuantConv2d if kind == "conv2d" else QuantLinear
    q = cls.from_float(layer, LayerQuant(kind, a, w, transform))
    with torch.no_grad():
        if transform.hadamard:
            signs = q.input_hadamard.signs
            signs.copy_(torch.randint(0, 2, signs.shape, generator=g) * 2.0 - 1)
        if transform.lowrank:
            for p in q.lowrank.parameters():
                p.normal_(0, 0.02, generator=g)
        dims = tuple(range(1, q.weight.dim()))
        q.weight_quantizer.set_range(
            q.weight.amin(dims, keepdim=True), q.weight.amax(dims, keepdim=True)
        )
        if gran == "tensor":
            q.act_quantizer.set_range(torch.tensor(-3.0), torch.tensor(3.0))
    return q.eval()


def measure(mod: nn.Module, xs: tuple, threads: int, warmup: int, runs: int) -> dict:
    wrapped = _Layer(mod).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "layer.onnx"
        with export_mode(wrapped):
            torch.onnx.export(wrapped, xs, str(path), dynamo=False, opset_version=17)
        sess = session(path, threads)
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}
        ort = time_it(lambda: sess.run(None, feeds), warmup, runs)
    return {"ort": ort, "paths": set(site_paths(wrapped).values())}


UNET_T = 399  # OSDFace's fixed timestep; a constant of the graph, as in the restore export
UNET_INPUTS = ["sample", "encoder_hidden_states"]


class _UNetStep(nn.Module):
    """One UNet evaluation at the fixed timestep: the graph ORT runs (latent, context) -> eps."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, UNET_T, context, return_dict=False)[0]


class _OneForward(nn.Module):
    """`observe_activation_ranges` calls `restore(images)`: here one UNet step on a latent."""

    def __init__(self, step: _UNetStep, context: torch.Tensor) -> None:
        super().__init__()
        self.step, self.context = step, context

    def restore(self, sample: torch.Tensor) -> torch.Tensor:
        return self.step(sample, self.context)


def _unet(config: dict[str, Any]) -> nn.Module:
    """A UNet of `config` (SD-2.1-base's by default), filled like `osdface_random` (seed 0)."""
    from diffusers import UNet2DConditionModel

    from quantface.models.random_osdface import random_init

    unet = UNet2DConditionModel.from_config(config)
    random_init(unet, 0)
    return unet.eval()


def _maxmin(step: _UNetStep, sample: torch.Tensor, context: torch.Tensor) -> None:
    """MaxMin W8A8 in place: every Linear/Conv2d and attention matmul of the UNet, per-channel
    min-max weights, per-tensor activation ranges from one FP forward on `sample`."""
    sites = quant_sites(step, ("unet",))
    wrap_model(step, QuantScheme().layout(step, sites, BitPlan.uniform(sites, 8, 8)))
    calibrate_weights(step, "minmax")
    observe_activation_ranges(_OneForward(step, context), sample, batch_size=1)


def _rel_err(out: np.ndarray, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||: the UNet's output is no image, so no PSNR."""
    r = ref.double().numpy()
    return float(np.linalg.norm(out.astype(np.float64) - r) / np.linalg.norm(r))


class _ProcessPeak:
    """Running maximum of the process's peak RSS (GiB). `peak_memory` resets the kernel's
    high-water mark, which is what ru_maxrss reads, so the peak is noted before each reset."""

    def __init__(self) -> None:
        self.gib = 0.0

    def note(self) -> float:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
        self.gib = max(self.gib, rss)
        return self.gib


def _fmt(t: dict[str, float]) -> str:
    return f"{t['median_ms'] / 1000:.2f} [{t['q1_ms'] / 1000:.2f}, {t['q3_ms'] / 1000:.2f}]"


def _ort_row(
    name: str,
    path: Path,
    xs: tuple[torch.Tensor, ...],
    refs: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    export_s: float,
    peak: _ProcessPeak,
) -> str:
    """Session creation, timed runs, memory of one ORT variant and its distance to `refs`: its
    own torch model (agreement) and torch FP32 (the quality the engine keeps)."""
    feeds = dict(zip(UNET_INPUTS, (x.numpy() for x in xs), strict=True))
    peak.note()
    with peak_memory() as mem:
        t0 = time.perf_counter()
        sess = session(path, args.threads)
        create_s = time.perf_counter() - t0
        out = sess.run(None, feeds)[0]
        timing = time_it(lambda s=sess: s.run(None, feeds), args.warmup, args.runs)
    del sess
    gc.collect()
    size = onnx_bytes(path) / 2**30
    return (
        f"| {name} | {_fmt(timing)} | {export_s:.0f} | {create_s:.0f} | {size:.2f} | "
        f"{_rel_err(out, refs[0]):.1e} | {_rel_err(out, refs[1]):.1e} | "
        f"{mem['peak_mb'] / 1024:.1f} | {peak.note():.1f} |"
    )


def _export(name: str, step: _UNetStep, xs: tuple[torch.Tensor, ...], path: Path) -> float | None:
    """Export time (s) of one variant, or None (printed why) when it cannot be exported here."""
    t0 = time.perf_counter()
    try:
        with export_mode(step):
            save_onnx(step, xs, path, UNET_INPUTS, ["eps"])
    except (MemoryError, RuntimeError, OSError) as e:
        print(f"{name}: export failed ({' '.join(str(e).split())[:200]}); skipped", flush=True)
        return None
    return time.perf_counter() - t0


@torch.no_grad()
def whole_unet(args: argparse.Namespace, config: dict[str, Any] = SD21_UNET) -> list[str]:
    """The table of the `--whole-unet` mode (module docstring); `config` another UNet's (the
    test runs a small one through the same code)."""
    g = torch.Generator().manual_seed(1)
    side = config["sample_size"]
    sample = torch.randn(1, config["in_channels"], side, side, generator=g)
    context = torch.randn(1, 77, config["cross_attention_dim"], generator=g)
    xs = (sample, context)
    peak = _ProcessPeak()
    step = _UNetStep(_unet(config)).eval()
    params = sum(p.numel() for p in step.parameters()) / 1e6
    lines = [
        (
            f"| UNet ({params:.1f} M params), one step | s per step (median [q1, q3]) | export s "
            "| session s | ONNX GiB | rel. err. vs its torch model | rel. err. vs torch FP32 "
            "| peak RSS above start GiB | process peak so far GiB |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    peak.note()
    with peak_memory() as mem:
        ref_fp = step(*xs)
        timing = time_it(lambda s=step: s(*xs), args.warmup, args.runs)
    lines.append(
        f"| torch FP32 | {_fmt(timing)} | – | – | – | – | 0 | "
        f"{mem['peak_mb'] / 1024:.1f} | {peak.note():.1f} |"
    )
    print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_s = _export("ORT FP32", step, xs, path)
        if export_s is not None:
            lines.append(_ort_row("ORT FP32", path, xs, (ref_fp, ref_fp), args, export_s, peak))
            print(lines[-1], flush=True)
        _maxmin(step, sample, context)
        ref_q = step(*xs)  # the torch fake-quant UNet: the reference of its engine
        quality = _rel_err(ref_q.numpy(), ref_fp)
        path = Path(tmp) / "maxmin.onnx"
        export_s = _export("ORT MaxMin W8A8", step, xs, path)
        # the same fake-quant UNet in float64: another summation order, as ORT's integer one is;
        # how far it moves is the scale ORT's disagreement with the float32 simulation is read on
        step.double()
        orders = _rel_err(step(*(x.double() for x in xs)).float().numpy(), ref_q)
        peak_orders = peak.note()
        del step  # the session should not share the machine's memory with the torch model
        gc.collect()
        if export_s is not None:
            lines.append(
                _ort_row("ORT MaxMin W8A8", path, xs, (ref_q, ref_fp), args, export_s, peak)
            )
            print(lines[-1], flush=True)
    m = machine()
    lines += [
        "",
        (
            "- MaxMin W8A8: every Linear/Conv2d and attention matmul; weights per-channel "
            "min-max, activations per tensor from ONE forward on a random latent (a speed "
            "calibration, not a quality one); its torch fake-quant output is "
            f"{quality:.1e} (rel. L2) from FP32's"
        ),
        (
            "- rel. err.: ||ORT - torch|| / ||torch|| on the UNet output (eps); ORT MaxMin's own "
            "torch model is the fake-quant UNet, whose codes on rounding ties flip between the "
            "two summation orders and move later layers: the same fake-quant UNet run in "
            f"float64 is {orders:.1e} from its float32 run (process peak by then, MaxMin's "
            f"export and the float64 run included: {peak_orders:.1f} GiB); random weights (seed 0)"
        ),
        (
            f"- onnxruntime {m['onnxruntime']} (CPU EP), onnx {m['onnx']}, torch {m['torch']}; "
            f"{m['cpu']}, {m['cores']} logical cores; {args.threads} thread(s), batch 1, latent "
            f"{side}x{side}, context 77x{config['cross_attention_dim']}, {args.warmup} warm-up + "
            f"{args.runs} timed runs; {SHARED_NOTE}"
        ),
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument(
        "--whole-unet", action="store_true", help="the whole SD-2.1 UNet instead of its layers"
    )
    p.add_argument("--workdir", help="--whole-unet: folder for the ONNX files (about 7 GB)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines = whole_unet(args) if args.whole_unet else per_layer(args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


def per_layer(args: argparse.Namespace) -> list[str]:
    """The per-layer table (module docstring)."""
    lines = [
        "| layer (SD-2.1, 512 px) | form | ORT ms (median [q1, q3]) | × ORT FP32 | path |",
        "|---|---|---|---|---|",
    ]
    for name, kind, c_in, c_out, k, side in LAYERS:
        g = torch.Generator().manual_seed(1)
        if kind == "matmul":  # [heads, tokens, d] x [heads, d, tokens]
            xs = (
                torch.randn(5, c_out, c_in, generator=g),
                torch.randn(5, c_in, c_out, generator=g),
            )
        else:
            shape = (1, c_in, side, side) if kind == "conv2d" else (1, side * side, c_in)
            xs = (torch.randn(shape, generator=g),)

        def make(form: str | None, kind=kind, c_in=c_in, c_out=c_out, k=k) -> nn.Module:
            return build_matmul(form) if kind == "matmul" else build(kind, c_in, c_out, k, form)

        fp = make(None)
        base = measure(fp, xs, args.threads, args.warmup, args.runs)["ort"]["median_ms"]
        with torch.no_grad():
            t = time_it(lambda fp=fp, xs=xs: fp(*xs), args.warmup, args.runs)["median_ms"]
        lines.append(f"| {name} | FP32 | {base:.1f} (torch {t:.1f}) | 1.00 | float |")
        for form in MATMUL_FORMS if kind == "matmul" else FORMS:
            r = measure(make(form), xs, args.threads, args.warmup, args.runs)
            o = r["ort"]
            lat = f"{o['median_ms']:.1f} [{o['q1_ms']:.1f}, {o['q3_ms']:.1f}]"
            path = ", ".join(sorted(r["paths"]))
            lines.append(f"| {name} | {form} | {lat} | {base / o['median_ms']:.2f} | {path} |")
            print(lines[-1], flush=True)
    m = machine()
    lines += [
        "",
        (
            f"- onnxruntime {m['onnxruntime']} (CPU EP), torch {m['torch']}; {m['cpu']}, "
            f"{m['cores']} logical cores; {args.threads} thread(s), batch 1, {args.warmup} "
            f"warm-up, median of {args.runs} runs; a shared machine: compare rows, not machines"
        ),
    ]
    return lines


if __name__ == "__main__":
    main()
