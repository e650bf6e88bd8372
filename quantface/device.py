"""The compute device of a command: one resolver shared by the CLI, the config check and tests.

`auto` (the default) is CUDA when torch sees a GPU and the CPU otherwise, so one config runs on
a laptop and on a GPU node. `cuda` and `cuda:N` are explicit requests: when no such GPU is
visible they fail at once with one line saying what torch found, instead of a CUDA error deep
inside the first forward pass (or, worse, a silent CPU run that takes weeks). torch is imported
inside the functions so that reading this module costs nothing for the commands that never
compute.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from quantface.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` -> cuda if available else cpu; `cpu`; `cuda`/`cuda:N` only if that GPU is visible."""
    import torch

    if not DEVICE_RE.match(spec):
        raise DeviceError(f"device '{spec}' is not one of {DEVICE_CHOICES}")
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        raise DeviceError(f"device '{spec}' requested but {cuda_found()}")
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"device '{spec}' requested but {count} CUDA device(s) are visible "
            f"(cuda:0..cuda:{count - 1})"
        )
    return device


def check_device(spec: str) -> None:
    """Raise DeviceError unless `spec` is valid here; torch is imported only for a CUDA spec
    (`auto` and `cpu` are valid on every machine), so a config check stays cheap."""
    if spec in ("auto", "cpu"):
        return
    resolve_device(spec)


def as_device(spec: str | torch.device) -> torch.device:
    """A device given as such stays; a spec string is resolved (the API takes either)."""
    return resolve_device(spec) if isinstance(spec, str) else spec


def cuda_found() -> str:
    """What torch reports about CUDA, so the error says whether the build or the machine lacks it."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    found = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return found if visible is None else f"{found} (CUDA_VISIBLE_DEVICES={visible!r})"


def describe(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H200, 139.8 GiB)` or `cpu`, for the run log."""
    import torch

    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters live (inputs are moved there, never the other way)."""
    return next(module.parameters()).device


def to_cpu(value: Any) -> Any:
    """Tensors inside nested dicts/lists/tuples moved to the CPU, so a saved file loads anywhere."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value
