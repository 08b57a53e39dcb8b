"""Timing of plain functions: one call, or the best of a few.

Two onnx models are timed against each other by graphprune's own
`graphprune.runtime.latency.bench` (sessions whose threads sleep between runs instead of
spinning, the order swapped every repeat, medians and the median paired ratio); the
scripts call it directly. Nothing here imports graphprune: bench_analyze_models.py's
worker imports it from another checkout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def timed(function: Callable[..., T], *args: Any) -> tuple[float, T]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def best_of(
    function: Callable[[], T], repeats: int, *, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, T]:
    """The fastest of `repeats` calls (the least disturbed by other load), in seconds of
    `clock`, and the last call's result."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        result = function()
        best = min(best, clock() - start)
    return best, result
