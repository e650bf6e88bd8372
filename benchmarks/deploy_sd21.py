"""SD-2.1 layer shapes at 512 px (64x64 latent) in ONNX Runtime on the CPU: what each method's
quantized layer form costs where the paper-size model would be deployed. Random weights (speed
does not depend on them).

    PYTHONPATH=. python benchmarks/deploy_sd21.py [--threads 1] [--runs 5] [--out deploy_sd21.md]

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
The whole SD-2.1 UNet is not run here: in FP32 it is ~3.5 GB, above ONNX's 2 GB protobuf limit
without external data, and one call takes tens of seconds on one core.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from quantface.deploy.onnx_export import export_mode, site_paths
from quantface.deploy.runtime import machine, session, time_it
from quantface.io import atomic_write_text
from quantface.quant.layers import (
    InputTransform,
    LayerQuant,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
)
from quantface.quant.quantizer import QuantSpec

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
