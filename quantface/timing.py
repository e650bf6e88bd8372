"""Machine-readable timing lines in the job logs: what `benchmarks/paper_cost.py` reads back.

Why: the bill of a paper-size study (20k AdaRound iterations, thousands of test images) can only
be extrapolated from what one iteration of each loop costs at full size, and the benchmark TSVs
give whole jobs only. Every loop whose length a config sets (distillation steps, reconstruction
iterations, sensitivity measurements, images) logs one line per run of the loop:

    timing stage=<name> n=<units> seconds=<total> rss_gib=<peak RSS so far>

`n` counts the loop's units (steps, iterations, images, measurements), so seconds / n is the cost
of one unit on the device the job ran on (the log's `device:` line names it).
"""

from __future__ import annotations

import logging
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("quantface.timing")
LINE = re.compile(r"timing stage=(?P<stage>\S+) n=(?P<n>\d+) seconds=(?P<s>[0-9.eE+-]+)")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log_timing(stage: str, n: int, seconds: float) -> None:
    """One timing line; `stage` is a single token (spaces would break the parser)."""
    log.info(
        "timing stage=%s n=%d seconds=%.4f rss_gib=%.2f",
        stage.replace(" ", "_"),
        n,
        seconds,
        peak_rss_gib(),
    )


@contextmanager
def timed(stage: str, n: int = 1) -> Iterator[None]:
    """Time the enclosed block and log it as `n` units of `stage`."""
    t0 = time.perf_counter()
    yield
    log_timing(stage, n, time.perf_counter() - t0)
