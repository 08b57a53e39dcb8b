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

from .api import Compensated, analyze, compensate, compensate_layerwise, mask, plan, prune
from .core.analysis import Analysis
from .core.metrics import count_macs, count_params
from .errors import GraphpruneError
from .inspect.report import BarrierRow, GroupRow, barrier_rows, groups_json, params_removed_by_kind
from .io.checks import CheckLevel, check_model
from .io.external import data_length, is_external
from .io.interface import Interface, resized
from .io.large import weight_bytes
from .io.loading import load_input
from .planning.budget import Budget
from .planning.plan import Plan, PlanOptions, plan_from_json
from .planning.target import LatencyTarget, plan_to_latency
from .posttrain.compensation import DEFAULT_DAMP, METHODS, check_damp
from .posttrain.criteria import CALIBRATED, OUTPUT_AWARE, SCATTER
from .posttrain.damping import FOLDS
from .posttrain.data import CalibrationData, describe
from .posttrain.sequential import collect_sequential
from .posttrain.statistics import CalibrationStats, collect
from .recovery.options import FinetuneOptions
from .runtime.inputs import check_given_shapes, load_inputs
from .runtime.latency import Latency, bench
from .runtime.probe import ProbedInputs, check_inputs, choose_inputs, unrun_inputs
from .runtime.sessions import SessionTooBig, execution_provider, too_big_to_run
from .runtime.stages import compare_staged, split_layers
from .runtime.validation import Validation, check_interface, compare, skipped
from .version import __version__

CALIB_MODES = ("auto", "whole", "sequential")


@dataclass(frozen=True)
class CalibrationOptions:
    """Where calibration samples come from (`path`: an NPZ or a folder of them; `random`:
    that many seeded random samples) and how many run at once."""

    path: str | None = None
    random: int | None = None
    batch: int = 32
    mode: str = "auto"  # "whole", "sequential" (by layer), "auto" (by layer if too big to run)
    mask: str = "auto"  # the padding-mask input (`posttrain.data.padding_input`)

    def __post_init__(self) -> None:
        if self.path is not None and self.random is not None:
            raise GraphpruneError("give --calib or --calib-random, not both")
        if self.mode not in CALIB_MODES:
            modes = ", ".join(CALIB_MODES)
            raise GraphpruneError(f"unknown calibration mode {self.mode!r} (choose from {modes})")

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
    approximate_dynamic_quant: bool = False
    prune_outputs: bool = False
    prune_kv_cache: bool = False  # a KV cache the caller feeds loses heads with them
    block_unit: str = "layer"
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    compensate: str = "none"
    damp: float | str = DEFAULT_DAMP  # "auto": per layer by held-out error (`damping`)
    inputs: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    bench: str | bool | None = None  # time both: "device" (or True), "end-to-end" (runtime.binding)
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
        check_damp(self.damp)
        if self.recover is not None and not self.calibration.given:
            raise GraphpruneError("--recover trains on calibration data: --calib or --calib-random")

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
    barriers: list[BarrierRow]  # what keeps the unprunable groups, most groups first
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
    """The pruned model with everything that produced it; `checks` is the ONNX check
    the input passed, which the pruned model passed too (and its file must pass:
    `save_model(..., check=result.checks)`), `interface` the input's as given."""

    model: onnx.ModelProto
    original: onnx.ModelProto
    analysis: Analysis
    plan: Plan
    report: PruneReport
    shapes: dict[str, tuple[int, ...]]
    checks: CheckLevel
    interface: Interface

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
        given = load_input(options.model)  # with the interface and checks as given
        model = given.model
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
            approximate_dynamic_quant=options.approximate_dynamic_quant
            or recorded.get("approximate_dynamic_quant", False),
            prune_outputs=options.prune_outputs or recorded.get("prune_outputs", False),
            prune_cache=options.prune_kv_cache or recorded.get("prune_kv_cache", False),
            # Residual blocks are looked for only when depth is asked for (or recorded).
            blocks=options.block_unit if plan_options.drop_blocks else recorded.get("blocks"),
            progress=options.progress,
        )

    layerwise = _layerwise(options, model)
    with timings.stage("calibrate"):
        stats = _statistics(options, analysis, shapes, layerwise)

    compensation_notes: list[str] = []
    repaired: list[Compensated] = []  # the layer-by-layer repair's dense model (its oracle)
    damping: list[dict] = []

    def build(chosen: Plan) -> onnx.ModelProto:
        # Checked once below, against the input as given (not the folded model).
        del damping[:]  # the latency loop builds several times; the last one counts
        if stats is not None and options.compensate != "none" and layerwise:
            repaired[:] = [compensate_layerwise(
                analysis, chosen, _calibration_data(options, shapes), method=options.compensate,
                damp=options.damp, batch=options.calibration.batch, progress=options.progress,
                notes=compensation_notes, damping=damping, check=False,
            )]  # fmt: skip
            return repaired[0].model
        if stats is not None and options.compensate != "none":
            return compensate(
                analysis, chosen, stats, method=options.compensate, damp=options.damp,
                notes=compensation_notes, damping=damping, check=False,
            )  # fmt: skip
        return prune(analysis, chosen, check=False)

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

    with timings.stage("check"):
        check_model(pruned, level=given.checks)
    keep = chosen.keep_atom(analysis)
    interface = resized(given.interface, analysis.cache_sizes(keep))  # --prune-kv-cache
    recovery = None
    if options.recover is not None:  # weights only: the graph checked above stays
        with timings.stage("recover"):
            pruned, recovery = _recover(options, model, pruned, shapes)

    with timings.stage("validate"):
        validation: Validation | None = None
        # Trained weights have no masked oracle: compared with the original as a whole.
        if options.validate and (probed.unrun is not None or layerwise) and recovery is None:
            check_interface(interface, pruned, shapes_may_change=analysis.prune_outputs)
            if analysis.cache_ports:
                raise GraphpruneError(
                    "a pruned KV cache is validated on the whole model, not layer by layer "
                    "(use --calib-mode whole)"
                )
            reference = repaired[0].reference() if repaired else mask(analysis, chosen)
            try:
                validation = _layer_by_layer(reference, pruned, analysis, probed, options)
            except SessionTooBig:  # not even one layer fits: checked without sessions
                if probed.unrun is None:
                    raise
        if validation is None and probed.unrun is not None:
            validation = skipped(  # checked by the ONNX checker and the interface only
                probed.provider, probed.unrun, interface=interface, pruned=pruned,
                shapes_may_change=analysis.prune_outputs,
            )  # fmt: skip
        elif validation is None:
            validation = compare(
                model, pruned, feeds, shapes_may_change=analysis.prune_outputs,
                expected=probed.expected, interface=given.interface,
                cache=analysis.cache_positions(keep),
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
        "barriers": barrier_rows(analysis),
        "notes": chosen.notes,
    }
    if stats is not None:
        data = _calibration_data(options, shapes)
        report["calibration"] = {"data": describe(data), **stats.summary()}
        report["compensation"] = {
            "method": options.compensate, "damp": options.damp, "notes": compensation_notes,
            **({"damping": damping} if damping else {}),
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
        report["bench"] = bench(model, pruned, feeds,
                                timing="device" if options.bench is True else options.bench)
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return PruneResult(pruned, model, analysis, chosen, report, shapes, given.checks,
                       given.interface)  # fmt: skip


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
    if options.calibration.mode == "sequential" and not options.inputs:
        # Never the whole model in one session: validated layer by layer instead.
        why = "run layer by layer (--calib-mode sequential)"
        return unrun_inputs(model, options.input_shapes, options.seed, why)
    if options.inputs:
        return check_inputs(model, load_inputs(options.inputs), str(options.inputs))
    return choose_inputs(model, options.input_shapes, options.seed)


def _layerwise(options: PruneOptions, model: onnx.ModelProto) -> bool:
    """Whether calibration runs layer by layer: asked for, or (auto) the whole model's
    session would not fit in memory."""
    mode = options.calibration.mode
    if mode == "auto":
        return options.needs_statistics and too_big_to_run(model) is not None
    return mode == "sequential"


# Largest deviation from the masked original, over the output's scale, that passes.
_TOLERANCE = {onnx.TensorProto.FLOAT16: 2e-2, onnx.TensorProto.BFLOAT16: 5e-2}


def _layer_by_layer(reference, pruned, analysis: Analysis, probed: ProbedInputs,
                    options: PruneOptions) -> Validation:  # fmt: skip
    """The pruned model against its oracle (the masked original, or the masked repaired
    model), both run one layer at a time: bounded memory at any size."""
    split = split_layers(analysis.view)
    validation = compare_staged(reference, pruned, split, [probed.feeds], provider=probed.provider,
                                progress=options.progress)  # fmt: skip
    validation["mode"] = f"layer by layer against the masked original ({split.stages - 1} layers)"
    types = {o.name: o.type.tensor_type.elem_type for o in reference.graph.output}
    for row in validation["outputs"]:
        limit = _TOLERANCE.get(types.get(row["name"]), 1e-3)
        if row["max_rel"] is not None and row["max_rel"] > limit:
            raise GraphpruneError(
                f"layer-by-layer validation: output '{row['name']}' differs from the masked "
                f"original by {row['max_rel']:.2g} of its scale (a wrong slice)"
            )
    return validation


def _statistics(
    options: PruneOptions,
    analysis: Analysis,
    shapes: dict[str, tuple[int, ...]],
    layerwise: bool = False,
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
    data, criterion = _calibration_data(options, shapes), options.plan.criterion
    if layerwise:
        if options.needs_block_influence:
            raise GraphpruneError("block criterion 'influence' needs the whole model's session "
                                  "(--calib-mode whole); --block-criterion magnitude needs none")
        return collect_sequential(analysis, data, batch=options.calibration.batch,
                                  scatter=criterion in SCATTER, progress=options.progress)
    stats = collect(
        analysis, data, batch=options.calibration.batch, progress=options.progress,
        # Only the Block Influence pass runs when no channel criterion needs statistics.
        consumers=None if options.needs_channel_statistics else [],
        # X^T X: for least squares, and for the OBS saliency (the repair it assumes).
        scatter=options.compensate == "lsq" or criterion in SCATTER,
        folds=FOLDS if options.compensate == "lsq" and options.damp == "auto" else 0,
        blocks=options.needs_block_influence,
    )  # fmt: skip
    if criterion in OUTPUT_AWARE:  # gradients of the outputs, through the torch lowering
        from .api import sensitivity  # the one verb that needs torch

        sensitivity(analysis, data, stats, criterion=criterion, batch=options.calibration.batch,
                    seed=options.seed)  # fmt: skip
    return stats


def _recover(options: PruneOptions, original, pruned, shapes) -> tuple[onnx.ModelProto, dict]:
    """The pruned model distilled towards the original on the calibration data."""
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
        mask=options.calibration.mask,
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
