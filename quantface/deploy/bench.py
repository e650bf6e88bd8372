"""One deploy measurement: a model's ONNX graph in ONNX Runtime against its torch simulation.

For a quantized model.pt and its exported ONNX file: how closely the engine reproduces the
fake-quant output (PSNR of ORT vs torch on the same faces: the deviation is rounding ties that
flip between float orders of summation, nothing systematic), the quality it keeps (PSNR against
the FP model's output, `psnr_fp`), which integer kernels ORT really runs (node types of its
optimized graph), its latency and peak memory. For the FP model the torch FP32 timing is taken
too, the baseline every row is compared with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantface.deploy.onnx_export import onnx_bytes, site_summary
from quantface.deploy.runtime import (
    integer_ops,
    machine,
    optimized_ops,
    peak_memory,
    run,
    session,
    time_it,
)
from quantface.errors import DataError
from quantface.models.checkpoint import load_bundle


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two images in [0, 1]; identical images give inf."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def faces(size: int, images: str | Path | None, n: int, seed: int) -> torch.Tensor:
    """[n, 3, size, size] LQ faces: the first n images of a folder, else seeded uniform noise."""
    if images is None:
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    from quantface.io import list_images, read_image, to_tensor

    paths = list_images(images)[:n]
    if len(paths) < n:
        raise DataError(f"{images} holds {len(paths)} images, the benchmark needs {n}")
    batch = torch.stack([to_tensor(read_image(p)) for p in paths])
    if batch.shape[-2:] != (size, size):
        raise DataError(f"{images}: images are {tuple(batch.shape[-2:])}, the model takes {size}")
    return batch


@torch.no_grad()
def bench(
    model: str | Path,
    onnx_path: str | Path,
    *,
    fp: str | Path | None = None,
    images: str | Path | None = None,
    n_images: int = 2,
    threads: int = 1,
    warmup: int = 3,
    runs: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure one model (see the module docstring); every call is one image (the exported
    batch), so latency is per face."""
    torch.set_num_threads(threads)
    bundle, layout, meta = load_bundle(model)
    x = faces(bundle.image_size, images, n_images, seed)
    sim = bundle.restore(x).numpy()
    with peak_memory() as mem:
        sess = session(onnx_path, threads)
        outs = np.concatenate([run(sess, x[i : i + 1].numpy()) for i in range(len(x))])
        timing = time_it(lambda: run(sess, x[:1].numpy()), warmup, runs)
    ops = optimized_ops(onnx_path, threads)
    result: dict[str, Any] = {
        "model": bundle.name,
        "method": meta.get("method", "fp") if layout else "fp",
        "bits": meta.get("bits", "fp32") if layout else "fp32",
        "image_size": bundle.image_size,
        "onnx_bytes": onnx_bytes(onnx_path),
        "psnr_vs_sim": psnr(outs, sim),
        "integer_ops": integer_ops(ops),
        "sites": site_summary(bundle),
        "settings": {"threads": threads, "warmup": warmup, "runs": runs, "batch": 1},
        "machine": machine(),
    }
    engine = "ORT int" if layout else "ORT FP32"
    result["rows"] = [{"engine": engine, **timing, **mem}]
    if fp is not None:
        ref = load_bundle(fp)[0].restore(x).numpy()
        result["psnr_fp"] = psnr(outs, ref)
        result["psnr_fp_sim"] = psnr(sim, ref)
    if not layout:  # the FP baseline: torch FP32 on the same face, same threads
        del bundle
        with peak_memory() as mem:
            fp_model = load_bundle(model)[0]
            timing = time_it(lambda: fp_model.restore(x[:1]), warmup, runs)
        result["rows"].insert(0, {"engine": "torch FP32", **timing, **mem})
    return result
