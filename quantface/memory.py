"""The stage a command is in and the memory it peaked at, for the one-line out-of-memory error.

Running out of memory is not a mistake in the config, but the user must act on it (a smaller
batch, fewer calibration images, a larger GPU), so the CLI reports which command and stage ran
out and how high memory went instead of a traceback. Stages are set by the command as it goes
and deliberately not reset when an exception unwinds, so the error names the stage that failed.
"""

from __future__ import annotations

import logging
import resource
import sys

log = logging.getLogger(__name__)
_stage = "start"


def enter_stage(name: str) -> None:
    """Record (and log at debug level) the stage the command has reached."""
    global _stage
    _stage = name
    log.debug("stage: %s", name)


def current_stage() -> str:
    return _stage


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA or host allocation failure (torch's CPU allocator raises a plain RuntimeError)."""
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


def peak_memory() -> str:
    """Peak resident memory of this process, plus peak allocated memory of every used GPU."""
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    parts = [f"peak RSS {rss_gib:.2f} GiB"]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            peak = torch.cuda.max_memory_allocated(i)
            if peak:
                total = torch.cuda.get_device_properties(i).total_memory
                parts.append(f"peak cuda:{i} {peak / 2**30:.2f} of {total / 2**30:.1f} GiB")
    return ", ".join(parts)
