"""Keep freed memory in the process instead of handing it back to the kernel after every op.

Why: glibc's malloc serves a large block (above its mmap threshold, 128 KiB to 32 MiB) with a
fresh `mmap` and returns it with `munmap` when freed, and trims the heap's free top back to the
kernel. Fake quantization allocates several activation-sized temporaries per layer, so on CPU
many of them were new pages, each page a fault on first touch. Measured on the project's 2-core
machine (`python benchmarks/allocator.py`, one thread, a fresh process per figure): restoring a
batch of 8 faces with the EfficientDM W4A4 tiny restorer took 0.575 s with glibc's defaults and
0.492 s with the settings below (medians of 4; ranges 0.536-0.685 and 0.468-0.516). A training
step gains little: its tensors stay alive through the backward pass.
The numbers computed are bit for bit the same: only where the bytes live changes. PyTorch's CPU
tuning guide makes the same point with jemalloc or tcmalloc; this needs no extra library.

The cost: memory a process freed stays mapped to it, so its RSS never shrinks, and where later
allocations do not fit the freed blocks the peak grows: in the default run the restore-and-score
jobs peaked at 1.55 GiB instead of 0.82 GiB; the quantize jobs' peaks did not change.
Blocks of 1 GiB and more are still mapped and unmapped on their own. `QUANTFACE_MALLOC=default`
keeps glibc's own behaviour (for a run short of memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_ABOVE = 1 << 30  # only blocks this large get their own mapping
# -1: the heap's free top is never given back. mallopt's value is an int, so no threshold above
# 2 GiB can be set, and a training step's autograd graph can free more than that at once.
NEVER_TRIM = -1

_applied = False


def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))  # None or an error on musl, macOS
    except (ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are in effect.

    A no-op (False) on another libc, or with `QUANTFACE_MALLOC=default`.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("QUANTFACE_MALLOC", "") == "default" or not _is_glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_ABOVE)) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(NEVER_TRIM)) == 1 and ok
    if not ok:
        log.debug("mallopt refused the allocator thresholds; glibc's defaults stay")
    _applied = ok
    return ok
