"""Timing: the best of a few runs of a function, and functions timed alternately.

Two onnx models are timed by `graphprune.runtime.latency.bench` (sessions whose threads
sleep between runs instead of spinning, the order swapped every repeat, medians and the
median paired ratio); `alternate` is the same discipline for any callables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from graphprune.runtime.latency import bench  # noqa: F401  (re-exported for the scripts)

T = TypeVar("T")


def timed(function: Callable[..., T], *args: Any) -> tuple[float, T]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def best_of(
    function: Callable[[], Any], repeats: int, *, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The fastest of `repeats` calls, in seconds: the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        function()
        best = min(best, clock() - start)
    return best


@dataclass(frozen=True)
class Alternated:
    medians_s: tuple[float, ...]  # per function
    paired: tuple[float, ...]  # per function: median over repeats of its time / the first's


def alternate(
    functions: Sequence[Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> Alternated:
    """Time the functions in turns, the order reversed every other repeat, so that each
    sees the same machine state; the paired ratios cancel load that comes and goes."""
    for function in functions:
        for _ in range(warmup):
            function()
    times: list[list[float]] = [[] for _ in functions]
    order = list(range(len(functions)))
    for repeat in range(repeats):
        for which in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            functions[which]()
            times[which].append(time.perf_counter() - start)
    paired = tuple(
        statistics.median(t / f for f, t in zip(times[0], series, strict=True) if f > 0)
        for series in times
    )
    return Alternated(tuple(statistics.median(series) for series in times), paired)
