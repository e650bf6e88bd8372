"""The stage a command is in and the memory it peaked at, for the one-line out-of-memory error.

Running out of memory is not a mistake in the config, but the user must act on it (a smaller
batch, fewer calibration images, a larger GPU), so the CLI reports which command and stage ran
out and how high memory went instead of a traceback. Stages are set by the command as it goes
and deliberately not reset when an exception unwinds, so the error names the stage that failed.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


# --- the guard: a clear error before the kernel's OOM killer ----------------------------------
# The kernel kills a process that exhausts host memory with SIGKILL: no message, no cleanup, a
# bare "Killed" in the job log. The guard watches the memory still available (the job's cgroup
# limit under SLURM or a container, else the machine's MemAvailable) and, when it falls below a
# reserve, raises MemoryError in the main thread, which the CLI reports as its one-line
# out-of-memory error after the atomic writers have removed their temp files. A main thread
# stuck inside one long allocation-heavy call cannot take the exception; if memory is still
# short after GRACE_S, the guard prints the same line and ends the process itself.
RESERVE_ENV = "QUANTFACE_MEMORY_RESERVE_MB"  # override of the reserve (MB), e.g. for a test
POLL_S = 0.2
GRACE_S = 3.0
SHARE = 0.4  # of the memory in use: a process below it is not the one to stop


def _cgroup_headroom_mb() -> tuple[float, float] | None:
    """(limit minus usage, usage) of this process's cgroup (v2); None without a limit."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        folder = Path("/sys/fs/cgroup") / line.partition("::")[2].lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((folder / "memory.current").read_text())
        return (int(limit) - used) / 2**20, used / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _meminfo_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def headroom_mb() -> tuple[float, float] | None:
    """(memory this process can still get, memory in use around it) in MB: the tighter of its
    cgroup's headroom and the machine's MemAvailable; None where neither can be read."""
    options = [h for h in (_cgroup_headroom_mb(),) if h is not None]
    available, total = _meminfo_mb("MemAvailable"), _meminfo_mb("MemTotal")
    if available is not None and total is not None:
        options.append((available, total - available))
    return min(options) if options else None


def resident_mb() -> float:
    """This process's current resident memory (not its peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def default_reserve_mb() -> float:
    """5% of the machine's memory, between 512 MB and 4 GB (1.2 GB on a 24 GiB machine): room
    for the next few large tensors of a full-size model, small next to what a job uses."""
    if (env := os.environ.get(RESERVE_ENV)) is not None:
        return float(env)
    total = _meminfo_mb("MemTotal") or 0.0
    return min(max(0.05 * total, 512.0), 4096.0)


class _HostMemoryLow(MemoryError):
    pass


def _raise_low_memory(signum: int, frame: object) -> None:
    raise _HostMemoryLow("host memory nearly exhausted")


def _is_short(reserve: float) -> tuple[bool, float]:
    """(memory is below the reserve and this process holds a large share of what is used, MB
    left). The share keeps a small job beside a large one alive: the large one stops."""
    room = headroom_mb()
    if room is None:
        return False, float("nan")
    left, used = room
    return left < reserve and resident_mb() >= SHARE * used, left


@contextmanager
def memory_guard(command: str, reserve_mb: float | None = None) -> Iterator[None]:
    """Watch host memory while a command runs (main thread only: signals need it)."""
    reserve = default_reserve_mb() if reserve_mb is None else reserve_mb
    if threading.current_thread() is not threading.main_thread() or headroom_mb() is None:
        yield
        return
    stop = threading.Event()
    main_id = threading.main_thread().ident
    previous = signal.signal(signal.SIGUSR1, _raise_low_memory)

    def watch() -> None:
        signalled = None
        while not stop.wait(POLL_S):
            short, left = _is_short(reserve)
            if not short:
                signalled = None
                continue
            if signalled is None:
                log.warning("host memory low: %.0f MB left (reserve %.0f MB)", left, reserve)
                signalled = time.monotonic()
                signal.pthread_kill(main_id, signal.SIGUSR1)
            elif time.monotonic() - signalled > GRACE_S:
                sys.stderr.write(
                    f"quantface {command}: error: out of memory in stage '{current_stage()}' "
                    f"({peak_memory()}; {left:.0f} MB of host memory left); lower the batch "
                    "size or the image count, or use a larger machine\n"
                )
                sys.stderr.flush()
                os._exit(1)

    thread = threading.Thread(target=watch, name="memory-guard", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
