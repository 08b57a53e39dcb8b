"""Latency tables: every prunable compute layer timed alone in onnxruntime at a grid of
widths, on the provider, thread count and input shapes the model is deployed with.

A layer is a Conv, ConvTranspose, Gemm or MatMul whose constant weight loses channels,
together with the activation that directly follows it (its memory-bound neighbour: Relu,
Clip, Sigmoid, ...), rebuilt as a one-layer model at the shapes the model sees. Each axis
that a group shrinks ("out": the layer's output channels, "in": its input channels) is
swept alone, the other at full width, over

* an aligned grid: multiples of a power-of-two step of at least 16 (about ten points), and
* alignment probes around the middle of the axis: widths that are multiples of 32, 16,
  8 and of nothing larger, so that the table shows where a width off a multiple costs
  more than its size (onnxruntime's blocked NCHWc kernels, tensor-core tiles; on a GPU
  provider the grid is in multiples of 64 from 256 channels on: `grid`).

Every session of one axis is timed in alternated rounds (order reversed every round)
after one warm-up run, and medians are kept, so that a busy machine disturbs all widths
alike. A width leaves the rounds as soon as its median is known to within
`ProfileOptions.spread` of itself or within FLOOR of the whole model's latency
(`binding.stable`), after `repeats` rounds at most: a quiet machine needs a few, a busy
one gets more, and a layer that costs a sliver of the model is not timed to a precision
that the loop's tolerance (5% of the model) never sees. Layers with the same signature
(op, shapes, attributes, neighbour) are timed once. On a provider with device memory,
every timing binds inputs and outputs on the device (`binding.Runner`, timing "device"):
the latency of the model, not of copies.

The whole model is timed too (`measured_ms`): the planner scales its prediction to it, and
the rest (ops that no table covers) is assumed to scale with the kept activation volume.
The table records machine, provider, threads, shapes and the model's fingerprint, and is
refused where any of them differs (`check_matches`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..core.analysis import Analysis
from ..errors import GraphpruneError
from ..io.shapes import infer_shapes
from .binding import Runner, check_timing, is_gpu, stable
from .layers import LayerSpec, layer_axes
from .sessions import execution_provider, onnxruntime, session

logger = logging.getLogger(__name__)

TABLE_FORMAT = "graphprune.latency-table/1"
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Channel multiples a width can be aligned to. CPU kernels step on blocks of 8 or 16
# (onnxruntime's NCHWc), GPU kernels on tiles of 8 to 128 (tensor-core fragments, CTA
# tiles): the probes of a GPU provider cover 128 too.
ALIGNMENTS = (128, 64, 32, 16, 8, 1)
CHUNK = 48  # sessions timed together: a burst of load hits some, not a whole axis
FLOOR = 0.002  # a layer's median known within 0.2% of the model's latency is enough


@dataclass
class AxisCurve:
    """Median milliseconds of a layer at each `widths` entry of one axis (the other axis
    full); `penalty[a]`: latency of a width that is a multiple of `a` and of no larger
    alignment, over the aligned curve at that width (1.0 = no cliff)."""

    channels: int
    widths: list[int]
    ms: list[float]
    penalty: dict[int, float] = field(default_factory=dict)

    def aligned(self, width: float) -> float:
        """The aligned curve at `width`, linear between grid points (constant below)."""
        return float(np.interp(width, self.widths, self.ms))

    def at(self, width: int) -> float:
        alignment = next(a for a in ALIGNMENTS if width % a == 0)
        return self.aligned(width) * self.penalty.get(alignment, 1.0)


@dataclass
class LayerTiming:
    """One profiled layer: its full-width time and a curve per shrinking axis."""

    node: str
    signature: str
    full_ms: float
    output_elements: int
    axes: dict[str, AxisCurve]


@dataclass
class LatencyTable:
    """Per-layer latency curves and the whole model's measured latency, with everything
    they depend on (a table measured elsewhere is refused)."""

    machine: str
    provider: str
    threads: int
    shapes: dict[str, list[int]]
    model: str  # fingerprint of the graph and weights
    measured_ms: float
    repeats: int
    layers: dict[str, LayerTiming]
    onnxruntime: str = ""
    timing: str = "end-to-end"  # tables older than `--timing` timed copies too

    def to_json(self) -> dict:
        data = asdict(self)
        for layer in data["layers"].values():
            for curve in layer["axes"].values():
                curve["penalty"] = {str(k): v for k, v in curve["penalty"].items()}
        return {"format": TABLE_FORMAT, **data}

    @classmethod
    def from_json(cls, data: object, where: str) -> LatencyTable:
        try:
            if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
                raise ValueError("not a graphprune latency table")
            fields = {k: v for k, v in data.items() if k != "format"}
            layers = {
                name: LayerTiming(
                    **{
                        **layer,
                        "axes": {
                            axis: AxisCurve(
                                **{
                                    **curve,
                                    "penalty": {
                                        int(k): float(v) for k, v in curve["penalty"].items()
                                    },
                                }
                            )
                            for axis, curve in layer["axes"].items()
                        },
                    }
                )
                for name, layer in fields.pop("layers").items()
            }
            table = cls(**fields, layers=layers)
            if not (
                table.measured_ms > 0
                and all(curve.widths for layer in layers.values() for curve in layer.axes.values())
            ):
                raise ValueError("empty curves or no measured latency")
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise GraphpruneError(f"{where} is not a valid latency table: {error}") from None
        return table

    def check_matches(
        self,
        where: str,
        *,
        machine: str,
        provider: str,
        threads: int,
        shapes: dict[str, tuple[int, ...]],
        model: str,
        timing: str,
    ) -> None:
        """One-line refusal when the table was measured for anything else than this run."""
        wanted = {
            "machine": machine,
            "provider": provider,
            "threads": threads,
            "shapes": {k: list(v) for k, v in shapes.items()},
            "model": model,
            "timing": timing,
        }
        for key, value in wanted.items():
            if getattr(self, key) != value:
                raise GraphpruneError(
                    f"latency table {where} was measured for {key} {getattr(self, key)!r}, "
                    f"this run has {value!r}: profile again"
                )


@dataclass(frozen=True)
class ProfileOptions:
    """How to time: the onnxruntime `provider`, intra-op `threads` (None: every usable
    core), `timing` ("device": inputs and outputs bound on the provider's device;
    "end-to-end": host arrays, copies included), at most `repeats` alternated rounds
    after `warmup` runs per session, fewer once every median is within `spread`."""

    provider: str = "CPUExecutionProvider"
    threads: int | None = None
    repeats: int = 15
    warmup: int = 1
    seed: int = 0
    timing: str = "device"
    spread: float = 0.03

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise GraphpruneError(f"--threads must be at least 1, got {self.threads}")
        if self.repeats < 1 or self.warmup < 0:
            raise GraphpruneError("repeats must be at least 1 and warm-up at least 0")
        if not 0.0 <= self.spread < 1.0:
            raise GraphpruneError(f"the timing spread must be in [0, 1), got {self.spread}")
        check_timing(self.timing)

    @property
    def resolved_threads(self) -> int:
        return self.threads or usable_cores()


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_id() -> str:
    """CPU model and core count: what a CPU latency table depends on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}"


def fingerprint(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()[:16]


def profile(
    analysis: Analysis,
    shapes: dict[str, tuple[int, ...]],
    feeds: dict,
    options: ProfileOptions = ProfileOptions(),
) -> LatencyTable:
    """Time every prunable layer of `analysis` at a grid of widths, and the whole model."""
    view = analysis.view
    provider, threads = options.provider, options.resolved_threads
    concrete = infer_shapes(view.model, shapes)
    whole = Runner(session(view.model, provider, threads), feeds, provider=provider,
                   timing=options.timing)  # fmt: skip
    measured_ms = statistics.median(_times_ms([whole], options)[0])
    floor_ms = FLOOR * measured_ms
    specs: dict[str, tuple[LayerSpec, list[str]]] = {}  # one per signature
    layers: dict[str, tuple[str, list[str], int]] = {}
    for name, roles in sorted(layer_axes(analysis).items()):
        spec = LayerSpec.of(view, view.nodes[name], concrete)
        if spec is not None:
            timed_roles = specs.setdefault(spec.signature, (spec, []))[1]
            # Layers alike may shrink different axes (a query projection its output, the
            # attention output its input): the one timing covers all of them.
            timed_roles[:] = sorted({*timed_roles, *roles})
            layers[name] = (spec.signature, sorted(roles), spec.output_elements)
    started = time.perf_counter()
    timed = dict(
        zip(specs, _time_layers(list(specs.values()), options, provider, threads, floor_ms),
            strict=True)
    )
    logger.info("profiled %d layers in %.1f s", len(specs), time.perf_counter() - started)
    timings = {
        name: LayerTiming(
            name,
            signature,
            timed[signature][0],
            elements,
            {role: timed[signature][1][role] for role in roles},
        )
        for name, (signature, roles, elements) in layers.items()
    }
    return LatencyTable(
        machine=machine_id(),
        provider=provider,
        threads=threads,
        shapes={k: list(v) for k, v in shapes.items()},
        model=fingerprint(view.model),
        measured_ms=round(measured_ms, 5),
        repeats=options.repeats,
        layers=timings,
        onnxruntime=onnxruntime().__version__,
        timing=options.timing,
    )


def grid(channels: int, gpu: bool = False) -> tuple[list[int], list[int]]:
    """The aligned widths (a power-of-two step of at least 16, about ten points, and the
    full width) and the alignment probes near the middle: one width that is a multiple
    of each of 32, 16, 8, 1 and of nothing larger. On a GPU provider the aligned step is
    at least 64 where the axis has 256 channels or more (its kernels step on tiles of 64
    and more: the curve is the tile-aligned one) and the probes sit below a multiple of
    128, so every multiple GPU kernels step on (8, 16, 32, 64) is either probed or on the
    aligned curve."""
    if channels <= 16:
        return list(range(1, channels + 1)), []
    step = 64 if gpu and channels >= 256 else 16
    while channels / step > 10:
        step *= 2
    aligned = sorted({*range(step, channels + 1, step), channels})
    top = 128 if gpu and channels >= 256 else 64
    middle = max(top, (channels // 2) // top * top)
    probes = [w for w in (middle - 32, middle - 16, middle - 8, middle - 1) if 0 < w < channels]
    return aligned, [w for w in probes if w not in aligned]


def _time_layers(
    specs: list[tuple[LayerSpec, list[str]]],
    options: ProfileOptions,
    provider: str,
    threads: int,
    floor_ms: float,
) -> list[tuple[float, dict[str, AxisCurve]]]:
    """Every (layer, axis, width) timed, CHUNK sessions at a time in alternated rounds
    with an empty model among them: its time (the cost of a run call) is subtracted."""
    rng = np.random.default_rng(options.seed)
    jobs = []  # (spec index, role, width, channels, aligned?)
    for index, (spec, roles) in enumerate(specs):
        for role in roles:
            channels = spec.channels(role)
            aligned, probes = grid(channels, is_gpu(provider))
            jobs += [(index, role, w, channels, True) for w in aligned]
            jobs += [(index, role, w, channels, False) for w in probes]
    measured: dict[tuple[int, str, int], float] = {}
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        built = [specs[i][0].model(role, w, rng) for i, role, w, _, _ in chunk]
        built.append(_empty_model())
        runners = [
            Runner(session(m, provider, threads), {"x": x}, provider=provider,
                   timing=options.timing)
            for m, x in built
        ]  # fmt: skip
        rounds = _times_ms(runners, options, floor_ms)
        # The fastest empty run is the cost of a call itself; its median would include
        # the load of a busy machine, which the layers' medians share only in part.
        overhead = min(rounds.pop())
        times = [statistics.median(t) for t in rounds]
        for (i, role, w, _, _), ms in zip(chunk, times, strict=True):
            measured[(i, role, w)] = max(ms - overhead, 0.05 * ms)
    results = []
    for index, (_, roles) in enumerate(specs):
        curves, full_times = {}, []
        for role in roles:
            mine = [job for job in jobs if job[0] == index and job[1] == role]
            channels = mine[0][3]
            aligned = [w for _, _, w, _, is_aligned in mine if is_aligned]
            ms = _nondecreasing([measured[(index, role, w)] for w in aligned])
            curve = AxisCurve(channels, aligned, [round(float(t), 5) for t in ms])
            for _, _, width, _, is_aligned in mine:
                if not is_aligned:
                    alignment = next(a for a in ALIGNMENTS if width % a == 0)
                    ratio = measured[(index, role, width)] / curve.aligned(width)
                    worst = max(curve.penalty.get(alignment, 1.0), ratio)  # never a bonus
                    curve.penalty[alignment] = round(worst, 4)
            curves[role] = curve
            full_times.append(measured[(index, role, channels)])
        results.append((round(statistics.median(full_times), 5), curves))
    return results


def _empty_model() -> tuple[onnx.ModelProto, np.ndarray]:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "empty", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, np.ones(1, np.float32)


def _nondecreasing(values: list[float]) -> list[float]:
    """The least-squares non-decreasing fit (pool adjacent violators): one slow outlier
    raises its neighbours a little instead of every wider width."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (mean_a, count_a), (mean_b, count_b) = blocks[-2], blocks.pop()
            blocks[-1] = [
                (mean_a * count_a + mean_b * count_b) / (count_a + count_b),
                count_a + count_b,
            ]
    return [mean for mean, count in blocks for _ in range(int(count))]


def _times_ms(
    runners: list[Runner], options: ProfileOptions, floor_ms: float = 0.0
) -> list[list[float]]:
    """The ms of every run of each runner, timed in alternated rounds after warm-up; a
    runner leaves the rounds once its median is stable (`options.spread`, `floor_ms`),
    all of them after `options.repeats` rounds."""
    for runner in runners:
        for _ in range(options.warmup):
            runner()
    times: list[list[float]] = [[] for _ in runners]
    active = list(range(len(runners)))
    for repeat in range(options.repeats):
        for which in active if repeat % 2 == 0 else active[::-1]:
            times[which].append(runners[which]())
        active = [w for w in active if not stable(times[w], options.spread, floor_ms)]
        if not active:
            break
    return times


def write_table(table: LatencyTable) -> str:
    return json.dumps(table.to_json(), indent=1, sort_keys=True) + "\n"


def check_provider(provider: str) -> str:
    """The onnxruntime name of `provider` (cpu, cuda, tensorrt or a full name), refused
    when it does not run here: a table timed on a fallback would be a lie."""
    name = PROVIDERS.get(provider, provider)
    ort = onnxruntime()
    if name not in ort.get_available_providers():
        raise GraphpruneError(f"execution provider {name} is not available here")
    if name == "CUDAExecutionProvider" and execution_provider() != name:
        raise GraphpruneError("the CUDA execution provider is installed but does not run here")
    return name
