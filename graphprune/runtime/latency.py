"""Latency: both models timed alternately in one process, medians."""

from __future__ import annotations

import statistics
import time
from typing import TypedDict

import onnx

from .sessions import execution_provider, run, session


class Latency(TypedDict):
    execution_provider: str
    repeats: int
    threads: int | None
    latency_ms_before: float
    latency_ms_after: float
    speedup: float | None
    paired_fraction: float | None  # median over repeats of after/before timed side by side


def bench(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds,
    repeats: int = 30,
    provider: str | None = None,
    threads: int | None = None,
    warmup: int = 3,
) -> Latency:
    """Median latency (ms) of both models, timed alternately in one process (the order
    swapped every repeat) so that both see the same machine state, and the median ratio
    of the two times of each repeat."""
    provider = provider or execution_provider()
    sessions = [session(original, provider, threads), session(pruned, provider, threads)]
    for s in sessions:
        for _ in range(warmup):
            run(s, feeds)
    times: list[list[float]] = [[], []]
    for repeat in range(repeats):
        for which in (0, 1) if repeat % 2 == 0 else (1, 0):
            start = time.perf_counter()
            run(sessions[which], feeds)
            times[which].append((time.perf_counter() - start) * 1000)
    before, after = statistics.median(times[0]), statistics.median(times[1])
    # Each repeat times both back to back: the median of their ratios cancels load that
    # comes and goes better than the ratio of the medians does.
    paired = statistics.median(b / a for a, b in zip(*times, strict=True) if a > 0)
    return {
        "execution_provider": provider,
        "repeats": repeats,
        "threads": threads,
        "latency_ms_before": round(before, 4),
        "latency_ms_after": round(after, 4),
        "speedup": round(before / after, 4) if after > 0 else None,
        "paired_fraction": round(paired, 4),
    }
