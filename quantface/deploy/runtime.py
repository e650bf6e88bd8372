"""ONNX Runtime on the CPU: sessions with one-line errors, the optimized graph, honest timings.

Timings are what a user of a shared CPU can reproduce: a fixed intra-op thread count (and one
inter-op thread), `warmup` untimed runs, then the median and quartiles of `runs` timed runs of
one batch. Peak memory is the process's peak resident set above what it held before the engine
was built (Linux: the peak is reset through /proc/self/clear_refs first), so loading the weights
and every arena the engine allocates count, the Python interpreter and imports do not.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from quantface.errors import QuantFaceError

# node types of the optimized graph that compute in integers (the integer kernels of the CPU EP)
INTEGER_OPS = (
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
)
SHARED_NOTE = (
    "measured on a shared machine (other jobs ran beside it): compare rows of one table, "
    "not with other machines; the quartiles show the spread"
)


class EngineError(QuantFaceError):
    """The engine cannot load or run the model (an operator or type it has no kernel for)."""


EXTERNAL_FILE_KEY = "session.optimized_model_external_initializers_file_name"
EXTERNAL_MIN_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"
EXTERNAL_MIN_BYTES = 1 << 20


def session(path: str | Path, threads: int, optimized: str | Path | None = None) -> Any:
    """A CPU InferenceSession with fixed threads; a model it cannot run raises one line naming
    the operator (and the file). `optimized`: also write the graph ORT will run there."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the optimized-model note on NCHWc layouts is not a problem
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
        # large initializers beside it, as the export does: one protobuf holds at most 2 GB,
        # and the SD-2.1-size graphs are larger
        data = Path(optimized).name + ".data"
        opts.add_session_config_entry(EXTERNAL_FILE_KEY, data)
        opts.add_session_config_entry(EXTERNAL_MIN_KEY, str(EXTERNAL_MIN_BYTES))
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except _ort_errors() as e:
        raise EngineError(f"{path}: {_engine_message(e)}") from None


def _ort_errors() -> tuple[type[BaseException], ...]:
    """The exception classes ORT raises for a model it cannot load or run (none subclass a
    common ORT base, all are plain Exceptions)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile")
    names += ("NotImplemented", "RuntimeException", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _engine_message(e: BaseException) -> str:
    """ORT's load/run failure as one line that names the operator where ORT names one."""
    import onnxruntime as ort

    text = " ".join(str(e).split())
    where = f"ONNX Runtime {ort.__version__} (CPU)"
    m = re.search(r"implementation for (\w+)\((\d+)\)", text)
    if m:
        return f"{where} has no kernel for operator {m.group(1)} (opset {m.group(2)})"
    m = re.search(r"(\S+)\(-?\d+\) is not a registered function/op", text)
    if m:
        return f"{where} does not know operator {m.group(1)}"
    m = re.search(r"running (\w+) node", text)
    if m:
        return f"{where} failed in operator {m.group(1)}: {text[-200:]}"
    return f"{where} cannot load it: {text[:300]}"


def run(sess: Any, x: Any) -> Any:
    """One inference; a kernel failure is one line naming the operator."""
    try:
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except _ort_errors() as e:
        raise EngineError(_engine_message(e)) from None


def optimized_ops(path: str | Path, threads: int = 1) -> Counter[str]:
    """Node types of the graph ORT's CPU EP runs after its optimizations (fusions included)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        session(path, threads, out)
        graph = onnx.load(str(out), load_external_data=False).graph
        return Counter(n.op_type for n in graph.node)


def integer_ops(ops: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in sorted(ops.items()) if k in INTEGER_OPS}


def time_it(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """Median and quartiles (ms) of `runs` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return summary_ms(times)


def summary_ms(times: list[float]) -> dict[str, float]:
    """Median and quartiles of timed runs (ms), as every engine row reports them."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "q1_ms": q[0], "q3_ms": q[2]}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Yields a dict that holds, on exit, `peak_mb`: peak RSS above the RSS at entry (Linux)."""
    result: dict[str, float] = {}
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        base = _rss_kib("VmRSS")
    except OSError:  # not Linux: no per-window peak
        base = -1
    yield result
    result["peak_mb"] = (_rss_kib("VmHWM") - base) / 1024 if base >= 0 else float("nan")


def machine() -> dict[str, Any]:
    """Engine versions and the machine, for the table's footer."""
    import onnx
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
    }
