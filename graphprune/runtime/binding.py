"""Timing a session as a service runs it.

A GPU service keeps its inputs and outputs in device memory: the latency that pruning can
shrink is the model's, not the copy of a batch from host memory (on an H100, 5.8 ms of
an 11 ms ResNet-50 at batch 64 was that copy, and a loop that timed it cut far past its
target). `Runner` runs one session either

* "device": inputs uploaded once as OrtValues on the provider's device, outputs bound
  there (onnxruntime IO binding), inputs and outputs synchronised around each run, so a
  timing is the model's alone; on the CPU provider the same path runs with OrtValues on
  "cpu", so it is exercised without a GPU; or
* "end-to-end": `session.run` with host arrays, copies included, for pipelines that
  really feed from host memory.

The copies themselves (host to device for the inputs, device to host for the outputs)
are measured apart (`Runner.copies`) and reported beside the latency, in both modes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..errors import GraphpruneError
from .sessions import onnxruntime, run, run_bound

TIMINGS = ("device", "end-to-end")
# The OrtValue device of each provider's memory (ROCm and MIGraphX builds name theirs
# "cuda" in onnxruntime's Python API too); providers not listed keep tensors on the host.
_DEVICES = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "ROCMExecutionProvider": "cuda",
    "MIGraphXExecutionProvider": "cuda",
    "DmlExecutionProvider": "dml",
}
_COPY_REPEATS = 5


def device_of(provider: str) -> str:
    """Where `provider` keeps tensors: "cuda", "dml" or "cpu"."""
    return _DEVICES.get(provider, "cpu")


def is_gpu(provider: str) -> bool:
    return device_of(provider) != "cpu"


def check_timing(timing: str) -> str:
    if timing not in TIMINGS:
        raise GraphpruneError(f"--timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    return timing


@dataclass(frozen=True)
class Copies:
    """Milliseconds to copy a model's inputs to its device and its outputs back (medians)."""

    upload_ms: float
    download_ms: float

    def to_json(self) -> dict[str, float]:
        return {"upload_ms": round(self.upload_ms, 4), "download_ms": round(self.download_ms, 4)}


class Runner:
    """One session and its feeds, timed in `timing` mode on `provider`'s device."""

    def __init__(self, sess, feeds: dict[str, np.ndarray], *, provider: str, timing: str) -> None:
        self.session, self.feeds, self.timing = sess, feeds, check_timing(timing)
        self.device = device_of(provider)
        self.binding = self._bind() if timing == "device" else None

    def _upload(self) -> dict:
        ort = onnxruntime()
        return {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device, 0)
            for name, value in self.feeds.items()
        }

    def _bind(self):
        binding = self.session.io_binding()
        # The OrtValues must outlive the binding: it holds their memory, not a reference.
        self._values = self._upload()
        for name, value in self._values.items():
            binding.bind_ortvalue_input(name, value)
        for output in self.session.get_outputs():
            binding.bind_output(output.name, self.device, 0)
        return binding

    def __call__(self) -> float:
        """Milliseconds of one run (for "device": synchronised, nothing copied)."""
        started = time.perf_counter()
        if self.binding is None:
            run(self.session, self.feeds)
        else:
            run_bound(self.session, self.binding)
        return (time.perf_counter() - started) * 1000

    def outputs(self) -> list[np.ndarray]:
        """The outputs of one run, copied to the host (after the run, never timed)."""
        if self.binding is None:
            return run(self.session, self.feeds)
        run_bound(self.session, self.binding)
        return self.binding.copy_outputs_to_cpu()

    def copies(self) -> Copies:
        """The upload of the feeds and the download of the outputs, medians of a few."""
        binding = self.binding if self.binding is not None else self._bind()
        run_bound(self.session, binding)
        uploads, downloads = [], []
        for _ in range(_COPY_REPEATS):
            started = time.perf_counter()
            self._upload()
            uploads.append(time.perf_counter() - started)
            started = time.perf_counter()
            binding.copy_outputs_to_cpu()
            downloads.append(time.perf_counter() - started)
        if self.binding is None:
            del self._values  # the end-to-end runner bound only to measure these
        return Copies(statistics.median(uploads) * 1000, statistics.median(downloads) * 1000)


def stable(times: list[float], spread: float, floor: float = 0.0) -> bool:
    """Whether the median of `times` is known to within `spread` of itself (or within
    `floor`, in the units of `times`): the order statistics that bound a 95% confidence
    interval of the median (distribution-free, binomial) lie within that of it."""
    n = len(times)
    if n < 5:
        return False
    ordered = sorted(times)
    half = 0.98 * n**0.5  # 1.96 * sqrt(n) / 2
    low, high = ordered[max(int(n / 2 - half), 0)], ordered[min(int(np.ceil(n / 2 + half)), n - 1)]
    middle = statistics.median(ordered)
    return middle > 0 and (high - low) / 2 <= max(spread * middle, floor)
