"""The whole prune as one library call: load, analyze, calibrate, plan, rewrite (with
compensation), validate, measure, report. The command line only parses and prints.

    result = prune_model(PruneOptions(model="model.onnx", plan=PlanOptions(ratio=0.5)))
    save(result.model, "small.onnx")
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypedDict

import onnx

from .api import analyze, compensate, load, plan, prune
from .core.analysis import Analysis
from .core.metrics import count_macs, count_params
from .errors import GraphpruneError
from .inspect.report import GroupRow, groups_json, params_removed_by_kind
from .io.external import data_length, is_external
from .io.large import weight_bytes
from .planning.budget import Budget
from .planning.plan import Plan, PlanOptions, plan_from_json
from .planning.target import LatencyTarget, plan_to_latency
from .posttrain.compensation import METHODS
from .posttrain.criteria import CALIBRATED
from .posttrain.data import CalibrationData, describe
from .posttrain.statistics import CalibrationStats, collect
from .recovery.options import FinetuneOptions
from .runtime.inputs import check_given_shapes, load_inputs
from .runtime.latency import Latency, bench
from .runtime.probe import ProbedInputs, check_inputs, choose_inputs, unrun_inputs
from .runtime.sessions import execution_provider
from .runtime.validation import Validation, compare, skipped
from .version import __version__


@dataclass(frozen=True)
class CalibrationOptions:
    """Where calibration samples come from (`path`: an NPZ or a folder of them; `random`:
    that many seeded random samples) and how many run at once."""

    path: str | None = None
    random: int | None = None
    batch: int = 32

    def __post_init__(self) -> None:
        if self.path is not None and self.random is not None:
            raise GraphpruneError("give --calib or --calib-random, not both")

    @property
    def given(self) -> bool:
        return self.path is not None or self.random is not None


@dataclass(frozen=True)
class PruneOptions:
    """Everything one prune needs. `plan` chooses the channels, or `plan_record` (the
    "plan" of an earlier report) re-applies exact ones; `inputs` (an NPZ) or seeded random
    inputs shaped by `input_shapes` validate the result (dims left open get the first
    candidate size the original model runs on); `block_unit` is what `plan.drop_blocks`
    drops ("layer" or "branch", `graphprune.core.blocks`); `output` is only recorded."""

    model: str | os.PathLike | onnx.ModelProto
    plan: PlanOptions = field(default_factory=PlanOptions)
    plan_record: dict | None = None
    approximate_norms: bool = False
    prune_outputs: bool = False
    block_unit: str = "layer"
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    compensate: str = "none"
    damp: float = 0.01
    inputs: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    bench: bool = False
    validate: bool = True  # False: onnxruntime runs neither model (checks without it only)
    output: str | None = None
    progress: bool = False
    latency: LatencyTarget | None = None  # plan to a measured latency instead
    recover: FinetuneOptions | None = None  # distil on the calibration data after pruning

    def __post_init__(self) -> None:
        if self.compensate not in METHODS:
            raise GraphpruneError(
                f"unknown compensation {self.compensate!r} (choose from {', '.join(METHODS)})"
            )

    @property
    def needs_statistics(self) -> bool:
        return self.needs_channel_statistics or self.needs_block_influence

    @property
    def needs_channel_statistics(self) -> bool:
        return self.plan.criterion in CALIBRATED or self.compensate != "none"

    @property
    def needs_block_influence(self) -> bool:
        return bool(self.plan.drop_blocks) and self.plan.block_criterion == "influence"


class BeforeAfter(TypedDict):
    before: int
    after: int
    removed_fraction: float


class PruneReport(TypedDict, total=False):
    """The JSON report (`graphprune prune --report`); keys in this order."""

    graphprune: str
    model: str
    output: str
    plan: dict
    params: BeforeAfter
    macs: BeforeAfter
    input_shapes: dict[str, list[int]]
    input_notes: list[str]  # only when the default shapes did not run
    validation: Validation
    params_removed_by_kind: dict[str, int]
    groups: list[GroupRow]
    notes: list[str]
    calibration: dict
    compensation: dict
    budget: dict
    blocks: list[dict]  # with --drop-blocks: every residual unit, its score, dropped or not
    latency: dict
    recovery: dict  # with `recover`: graphprune.recovery's report of the training
    bench: Latency
    timings: dict[str, float]


@dataclass
class PruneResult:
    """The pruned model with everything that produced it."""

    model: onnx.ModelProto
    original: onnx.ModelProto
    analysis: Analysis
    plan: Plan
    report: PruneReport
    shapes: dict[str, tuple[int, ...]]

    @property
    def provider(self) -> str:
        return self.report["validation"]["execution_provider"]

    @property
    def timings(self) -> dict[str, float]:
        return self.report["timings"]


class _Timings(dict):
    """Seconds per stage; with `progress`, one line per stage on stderr as it ends."""

    def __init__(self, progress: bool = False) -> None:
        super().__init__()
        self.progress = progress
        self.details: dict[str, str] = {}  # said after the stage's time

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = self[f"{name}_s"] = time.perf_counter() - started
            detail = self.details.pop(name, "")
            if seconds >= 0.05 or detail:  # stages that did something
                self.say(f"{name}: {seconds:.1f} s{detail and ', ' + detail}")

    def say(self, line: str) -> None:
        if self.progress:
            print(line, file=sys.stderr, flush=True)


def prune_model(options: PruneOptions) -> PruneResult:
    """Run the whole prune; raises GraphpruneError for bad input or a model that cannot be
    pruned safely (nothing is written here: saving is the caller's)."""
    timings = _Timings(options.progress)
    with timings.stage("load"):
        model = load(options.model)
        timings.details["load"] = _weights_text(model)
    with timings.stage("inputs"):
        check_given_shapes(model, options.input_shapes)
        probed = _inputs(model, options)
        if probed.unrun is not None:
            timings.details["inputs"] = f"not run in onnxruntime: {probed.unrun}"
        shapes, feeds = probed.shapes, probed.feeds

    recorded = (options.plan_record or {}).get("options", {})
    plan_options = options.plan
    if plan_options.budget is not None and plan_options.budget.shapes is None:
        budget = dataclasses.replace(plan_options.budget, shapes=shapes)
        plan_options = dataclasses.replace(plan_options, budget=budget)
    with timings.stage("analyze"):
        analysis = analyze(
            model,
            # A transformer's hidden size only goes with its normalizations (approximate).
            approximate_norms=options.approximate_norms
            or "hidden" in plan_options.only
            or recorded.get("approximate_norms", False),
            prune_outputs=options.prune_outputs or recorded.get("prune_outputs", False),
            # Residual blocks are looked for only when depth is asked for (or recorded).
            blocks=options.block_unit if plan_options.drop_blocks else recorded.get("blocks"),
            progress=options.progress,
        )

    with timings.stage("calibrate"):
        stats = _statistics(options, analysis, shapes)

    compensation_notes: list[str] = []

    def build(chosen: Plan) -> onnx.ModelProto:
        if stats is not None and options.compensate != "none":
            return compensate(
                analysis, chosen, stats, method=options.compensate, damp=options.damp,
                notes=compensation_notes,
            )  # fmt: skip
        return prune(analysis, chosen)

    latency = None
    if options.latency is not None and options.plan_record is None:
        if probed.unrun is not None:
            raise GraphpruneError(f"a latency target needs the model run: {probed.unrun}")
        with timings.stage("latency"):
            table = options.latency.resolve_table(analysis, shapes, feeds)
            fraction = options.latency.fraction_of(table)
            budget = Budget("latency", fraction, shapes=shapes, table=table)
            latency = plan_to_latency(
                analysis, dataclasses.replace(plan_options, budget=budget), build, feeds,
                table=table, target=fraction, tolerance=options.latency.tolerance,
                iterations=options.latency.iterations, repeats=options.latency.repeats,
                stats=stats,
            )  # fmt: skip
            chosen, pruned = latency.plan, latency.model
    else:
        with timings.stage("plan"):
            if options.plan_record is not None:
                chosen = plan_from_json(analysis, options.plan_record)
            else:
                chosen = plan(analysis, plan_options, stats=stats)
        with timings.stage("rewrite"):
            pruned = build(chosen)
            timings.details["rewrite"] = _weights_text(pruned)

    recovery = None
    if options.recover is not None:
        with timings.stage("recover"):
            pruned, recovery = _recover(options, model, pruned, shapes)

    with timings.stage("validate"):
        if probed.unrun is not None:  # checked by the ONNX checker and shape inference only
            validation = skipped(probed.provider, probed.unrun)
        else:
            validation = compare(
                model, pruned, feeds, shapes_may_change=analysis.prune_outputs,
                expected=probed.expected,
            )  # fmt: skip

    report: PruneReport = {
        "graphprune": __version__,
        "model": _label(options.model),
        "output": str(options.output),
        "plan": chosen.to_json(analysis),
        "params": _before_after(count_params(model), count_params(pruned)),
        "macs": _before_after(count_macs(model, shapes), count_macs(pruned, shapes)),
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        **({"input_notes": probed.notes} if probed.notes else {}),
        "validation": validation,
        "params_removed_by_kind": params_removed_by_kind(analysis, chosen),
        "groups": groups_json(analysis, chosen),
        "notes": chosen.notes,
    }
    if stats is not None:
        data = _calibration_data(options, shapes)
        report["calibration"] = {"data": describe(data), **stats.summary()}
        report["compensation"] = {
            "method": options.compensate, "damp": options.damp, "notes": compensation_notes,
        }  # fmt: skip
    if chosen.budget is not None:
        report["budget"] = chosen.budget
    if chosen.blocks is not None:
        report["blocks"] = chosen.blocks
    if latency is not None:
        report["latency"] = latency.summary
    if recovery is not None:
        report["recovery"] = recovery
    if options.bench and probed.unrun is None:
        report["bench"] = bench(model, pruned, feeds)
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return PruneResult(pruned, model, analysis, chosen, report, shapes)


def _inputs(model: onnx.ModelProto, options: PruneOptions) -> ProbedInputs:
    """Inputs the original model runs on, checked before anything is pruned: the user's
    NPZ, or seeded random ones of the first candidate shapes that run."""
    if not options.validate:
        why = "not asked for (--no-validate)"
        if options.inputs:
            feeds = load_inputs(options.inputs)
            shapes = {name: tuple(value.shape) for name, value in feeds.items()}
            return ProbedInputs(feeds, shapes, None, execution_provider(), [], why)
        return unrun_inputs(model, options.input_shapes, options.seed, why)
    if options.inputs:
        return check_inputs(model, load_inputs(options.inputs), str(options.inputs))
    return choose_inputs(model, options.input_shapes, options.seed)


def _statistics(
    options: PruneOptions, analysis: Analysis, shapes: dict[str, tuple[int, ...]]
) -> CalibrationStats | None:
    """Calibration statistics when a calibrated criterion or compensation needs them."""
    if not options.needs_statistics:
        return None
    if not options.calibration.given:
        criterion = options.plan.criterion
        what = f"criterion {criterion!r}" if criterion in CALIBRATED else "--compensate"
        if not options.needs_channel_statistics:
            what = "block criterion 'influence' (--block-criterion magnitude needs none)"
        raise GraphpruneError(f"{what} needs calibration data (--calib FILE or --calib-random N)")
    return collect(
        analysis,
        _calibration_data(options, shapes),
        # Only the Block Influence pass runs when no channel criterion needs statistics.
        consumers=None if options.needs_channel_statistics else [],
        batch=options.calibration.batch,
        scatter=options.compensate == "lsq",
        blocks=options.needs_block_influence,
        progress=options.progress,
    )


def _recover(options: PruneOptions, original, pruned, shapes) -> tuple[onnx.ModelProto, dict]:
    """The pruned model distilled towards the original on the calibration data."""
    if not options.calibration.given:
        raise GraphpruneError(
            "--recover trains on calibration data: give --calib or --calib-random"
        )
    from .recovery import require_torch

    require_torch()
    from .recovery.data import TrainingData
    from .recovery.distill import finetune  # imports torch

    data = TrainingData(
        path=options.calibration.path, random=options.calibration.random,
        shapes={name: tuple(shape[1:]) for name, shape in shapes.items()}, seed=options.seed,
    )  # fmt: skip
    result = finetune(pruned, original, data, options.recover)
    return result.model, result.report


def _calibration_data(options: PruneOptions, shapes) -> CalibrationData:
    return CalibrationData(
        path=options.calibration.path,
        random=options.calibration.random,
        shapes={name: tuple(shape[1:]) for name, shape in shapes.items()},
        seed=options.seed,
    )


def _weights_text(model: onnx.ModelProto) -> str:
    """How many weights, how large, and how many of those bytes wait on disk."""
    tensors = model.graph.initializer
    on_disk = sum(data_length(t) for t in tensors if is_external(t))
    text = f"{len(tensors)} weights, {weight_bytes(model) / 1e9:.2f} GB"
    return text + (f" ({on_disk / 1e9:.2f} GB on disk, read when needed)" if on_disk else "")


def _label(source: str | os.PathLike | onnx.ModelProto) -> str:
    return "<in memory>" if isinstance(source, onnx.ModelProto) else str(source)


def _before_after(before: int, after: int) -> BeforeAfter:
    return {
        "before": before,
        "after": after,
        "removed_fraction": round(1 - after / before, 6) if before else 0.0,
    }
