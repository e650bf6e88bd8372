"""TensorRT engines from the `qdq` export: what TensorRT would import (checked on any machine),
and the engine build and its timing (on a CUDA GPU with the `[tensorrt]` extra).

TensorRT quantizes explicitly: it reads QuantizeLinear/DequantizeLinear pairs and fuses
DQ -> Conv/MatMul -> Q into its own int8 kernels. TensorRT 10 builds such graphs as *strongly
typed* networks (every tensor keeps the type the ONNX gives it, no precision flags), and
TensorRT 11 removed the precision flags altogether, so that is the route taken here: the
`qdq` flavour of `quantface export --format onnx` runs the quantized sites in int8 and the rest
in the graph's FP32. (An FP16 or FP8 engine needs a graph typed that way; no such export exists
yet.) What TensorRT rejects in an explicitly quantized graph, and `check_layout` refuses before
a GPU is asked for:
- a Q/DQ zero point that is not zero, or uint8 codes (TensorRT's int8 is symmetric): the
  asymmetric static methods (MaxMin and the trained ones) export that way;
- ONNX Runtime's integer operators (ConvInteger, MatMulInteger, QLinear*, DynamicQuantizeLinear,
  MatMulNBits): the `ort` flavour's layout, which TensorRT has no importer for.

`build_engine` parses the graph with TensorRT's ONNX parser into a strongly typed network and
serializes the engine (temp file, then rename); `time_engine` runs it on the GPU (CUDA events
around `execute_async_v3`, median of repeated runs after warm-up). Neither can run without
TensorRT and a CUDA device; they stop with one line saying which is missing.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

from quantface.deploy.runtime import summary_ms
from quantface.errors import QuantFaceError

# ONNX Runtime's integer operators: the `ort` flavour's layout, not importable by TensorRT
ORT_INTEGER_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLinear",
        "MatMulIntegerToFloat",
        "MatMulNBits",
    }
)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class TensorRTError(QuantFaceError):
    """A graph TensorRT would reject, or TensorRT / a CUDA device that is not there."""


def _constants(model: Any) -> dict[str, Any]:
    """Initializers and Constant-node outputs by name, as numpy arrays (small ones only: the
    large weights of an external-data graph are not read)."""
    from onnx import numpy_helper

    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            out[n.output[0]] = n.attribute[0].t
    return {
        k: numpy_helper.to_array(t) for k, t in out.items() if not t.external_data or t.raw_data
    }


def check_layout(path: str | Path) -> dict[str, int]:
    """The graph's Q/DQ layout against TensorRT's rules (module docstring); returns the counts
    of Q/DQ nodes and of float Conv/MatMul/Gemm nodes fed by a DequantizeLinear. Raises
    TensorRTError naming the first offending node and how many there are."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    integer = [n for n in nodes if n.op_type in ORT_INTEGER_OPS]
    if integer:
        kinds = ", ".join(sorted({n.op_type for n in integer}))
        raise TensorRTError(
            f"{path}: {len(integer)} ONNX Runtime integer operators ({kinds}; first: "
            f"{integer[0].name or integer[0].op_type}) that TensorRT cannot import; export with "
            "--flavor qdq"
        )
    consts = _constants(model)
    bad = []
    for n in nodes:
        if n.op_type not in QDQ_OPS:
            continue
        zero = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zero is not None and (zero.dtype != np.int8 or zero.any()):
            bad.append((n, zero))
    if bad:
        n, zero = bad[0]
        raise TensorRTError(
            f"{path}: {len(bad)} Q/DQ nodes with an asymmetric grid ({zero.dtype} zero point "
            f"{int(zero.reshape(-1)[0])} at {n.name or n.op_type}); TensorRT's int8 has zero "
            "point 0: quantize with symmetric weights and activations (e.g. SmoothQuant, or a "
            "scheme with symmetric: true)"
        )
    producer = {o: n.op_type for n in nodes for o in n.output}
    fed = [
        n
        for n in nodes
        if n.op_type in ("Conv", "MatMul", "Gemm")
        and any(producer.get(i) == "DequantizeLinear" for i in n.input[:2])
    ]
    counts = Counter(n.op_type for n in nodes if n.op_type in QDQ_OPS)
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "qdq_fed_ops": len(fed),
    }


def _tensorrt() -> Any:
    if importlib.util.find_spec("tensorrt") is None:
        raise TensorRTError(
            "tensorrt not installed: pip install 'quantface-bench[tensorrt]' on a machine with "
            "a CUDA GPU (the layout check above passed)"
        )
    import tensorrt

    return tensorrt


def build_engine(onnx_path: str | Path, engine_path: str | Path, workspace_gib: int = 8) -> dict:
    """Parse the checked graph into a strongly typed TensorRT network and write its serialized
    engine (atomically); returns what was built. External data is read from beside the .onnx."""
    from quantface.io import atomic_path

    layout = check_layout(onnx_path)
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTError("TensorRT found no CUDA device to build for")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else '?'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path}")
    with atomic_path(Path(engine_path)) as tmp:
        Path(tmp).write_bytes(bytes(plan))
    return {"tensorrt": trt.__version__, "engine_bytes": Path(engine_path).stat().st_size, **layout}


def time_engine(engine_path: str | Path, warmup: int = 3, runs: int = 10) -> dict[str, Any]:
    """Median [quartiles] ms of one engine call on the GPU, inputs random of the engine's shapes
    (the one-step restore has one input), after `warmup` calls."""
    import torch

    trt = _tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTError("timing a TensorRT engine needs a CUDA device; none is visible")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        Path(engine_path).read_bytes()
    )
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = getattr(torch, trt.nptype(engine.get_tensor_dtype(name)).__name__)
        t = torch.rand(*engine.get_tensor_shape(name), device="cuda").to(dtype)
        buffers.append(t)
        context.set_tensor_address(name, t.data_ptr())
    times = []
    for step in range(warmup + runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        if step >= warmup:
            times.append(start.elapsed_time(end))
    return {
        "engine": f"TensorRT {trt.__version__}",
        "device": torch.cuda.get_device_name(),
        **summary_ms(times),
        "warmup": warmup,
        "runs": runs,
    }
