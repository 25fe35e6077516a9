"""Timing for benchmarks: wall time, CPU time of this process and its children, machine load.

CPU time includes the Spark JVM (a child process in local mode) and polars' threads, so a slow
wall time on a busy machine can be told apart from an engine doing more work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class Timing:
    """What one timed block cost."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_s": round(self.wall_s, 2),
            f"{prefix}_cpu_s": round(self.cpu_s, 2),
            f"{prefix}_load_before": round(self.load_before, 2),
            f"{prefix}_load_after": round(self.load_after, 2),
        }

    def describe(self) -> str:
        load = f"{self.load_before:.1f}→{self.load_after:.1f}"
        return f"{self.wall_s:.1f} s (cpu {self.cpu_s:.1f} s, load {load})"


def _cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of this process and of each live descendant."""
    me = psutil.Process()
    seconds = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


@contextmanager
def timed() -> Iterator[Timing]:
    """Time the block; the Timing is filled in when the block ends."""
    timing = Timing(load_before=os.getloadavg()[0])
    before = _cpu_seconds()
    start = time.perf_counter()
    yield timing
    timing.wall_s = time.perf_counter() - start
    after = _cpu_seconds()
    timing.cpu_s = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    timing.load_after = os.getloadavg()[0]
