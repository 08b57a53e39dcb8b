"""Latency: both models timed alternately in one process, medians; on a provider with
device memory, with inputs and outputs on the device (`binding`, timing "device") unless
end-to-end timing is asked for, the copies measured apart."""

from __future__ import annotations

import statistics
from typing import TypedDict

import onnx

from .binding import Copies, Runner, stable
from .sessions import execution_provider, session

# The paired ratio's median is known well enough for a loop whose tolerance is 5% once its
# confidence interval is within this of it (`binding.stable`).
PAIRED_SPREAD = 0.01
MIN_REPEATS = 10


class Latency(TypedDict):
    execution_provider: str
    timing: str  # "device" (copies excluded) or "end-to-end"
    repeats: int
    threads: int | None
    latency_ms_before: float
    latency_ms_after: float
    speedup: float | None
    paired_fraction: float | None  # median over repeats of after/before timed side by side
    copies_ms_before: dict[str, float]  # upload_ms (inputs to the device), download_ms
    copies_ms_after: dict[str, float]


def runner(
    model: onnx.ModelProto, feeds, provider: str, threads: int | None, timing: str
) -> Runner:
    return Runner(session(model, provider, threads), feeds, provider=provider, timing=timing)


def bench(
    original: onnx.ModelProto | Runner,
    pruned: onnx.ModelProto,
    feeds,
    repeats: int = 30,
    provider: str | None = None,
    threads: int | None = None,
    warmup: int = 1,
    timing: str = "device",
    copies: Copies | None = None,
) -> Latency:
    """Median latency (ms) of both models, timed alternately in one process (the order
    swapped every repeat) so that both see the same machine state, and the median ratio
    of the two times of each repeat: at most `repeats`, fewer once that median is stable.
    `original` may be a Runner already warm (a loop reuses it, and `copies`, its copies)."""
    provider = provider or execution_provider()
    first = original if isinstance(original, Runner) else None
    if first is None:
        first = runner(original, feeds, provider, threads, timing)
        for _ in range(warmup):
            first()
    second = runner(pruned, feeds, provider, threads, timing)
    for _ in range(warmup):
        second()
    runners = (first, second)
    times: list[list[float]] = [[], []]
    for repeat in range(repeats):
        for which in (0, 1) if repeat % 2 == 0 else (1, 0):
            times[which].append(runners[which]())
        # Each repeat times both back to back: the median of their ratios cancels load that
        # comes and goes better than the ratio of the medians does.
        ratios = [b / a for a, b in zip(*times, strict=True) if a > 0]
        if len(ratios) >= MIN_REPEATS and stable(ratios, PAIRED_SPREAD):
            break
    before, after = statistics.median(times[0]), statistics.median(times[1])
    ratios = [b / a for a, b in zip(*times, strict=True) if a > 0]
    return {
        "execution_provider": provider,
        "timing": timing,
        "repeats": len(times[0]),
        "threads": threads,
        "latency_ms_before": round(before, 4),
        "latency_ms_after": round(after, 4),
        "speedup": round(before / after, 4) if after > 0 else None,
        "paired_fraction": round(statistics.median(ratios), 4) if ratios else None,
        "copies_ms_before": (copies or first.copies()).to_json(),
        "copies_ms_after": second.copies().to_json(),
    }
