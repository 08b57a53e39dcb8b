"""The public verbs, one per stage, each a thin call into its subpackage.

model = load("model.onnx")
analysis = analyze(model)
chosen = plan(analysis, 0.5)                      # or PlanOptions(...)
pruned = prune(analysis, chosen)
validate(model, pruned)
save(pruned, "model.pruned.onnx")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from .core.analysis import Analysis, AnalysisOptions, analyze_view
from .core.graph import GraphView
from .core.rewrite import masked, rewrite
from .io.checks import CheckLevel, check_model
from .io.interface import interface_of, resized
from .io.loading import load_model
from .io.saving import save_model
from .planning.plan import Plan, PlanOptions, make_plan, plan_from_json
from .posttrain.compensation import compensated_model
from .posttrain.data import CalibrationData
from .posttrain.sequential import repair_sequential
from .posttrain.statistics import CalibrationStats, collect
from .runtime.inputs import input_shapes, random_inputs
from .runtime.validation import Validation, check_interface, compare


def load(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model (path with external data, or a ModelProto, which is copied)."""
    return load_model(source)


def analyze(
    model: onnx.ModelProto,
    *,
    approximate_norms: bool = False,
    approximate_dynamic_quant: bool = False,
    prune_outputs: bool = False,
    blocks: str | None = None,
    prune_cache: bool = False,
    progress: bool = False,
) -> Analysis:
    """Find every group of coupled channels, and why the unprunable ones are.

    `approximate_norms=True` also prunes channels that a normalization over channels
    mixes (LayerNorm, RMSNorm: inexact, marked in `Group.approximations`; needed for a
    transformer's hidden size); `approximate_dynamic_quant=True` also prunes channels
    that a DynamicQuantizeLinear quantizes together (`quantize_dynamic`: the kept channels
    are requantized on their own range; inexact, marked the same way);
    `prune_outputs=True` lets model outputs lose channels;
    `blocks="layer"` (or "branch") adds the residual blocks, groups of kind "blocks";
    `prune_cache=True` lets a KV cache the caller feeds and reads (onnxruntime-genai's
    past_key_values / present) lose the removed heads (`Analysis.cache_ports`)."""
    options = AnalysisOptions(
        approximate_norms=approximate_norms, approximate_dynamic_quant=approximate_dynamic_quant,
        prune_outputs=prune_outputs, blocks=blocks, prune_cache=prune_cache,
    )  # fmt: skip
    return analyze_view(GraphView(model), options=options, progress=progress)


def plan(
    analysis: Analysis,
    options: PlanOptions | float,
    *,
    stats: CalibrationStats | None = None,
) -> Plan:
    """Choose the channels to remove: `options`, or a plain ratio (`PlanOptions(ratio=r)`);
    `stats` from `calibrate` feed the calibrated criteria."""
    if not isinstance(options, PlanOptions):
        options = PlanOptions(ratio=float(options))
    return make_plan(analysis, options, stats=stats)


def prune(analysis: Analysis, plan: Plan, *, check: bool = True) -> onnx.ModelProto:
    """The pruned model; the plan is recorded in its metadata ("graphprune.plan")."""
    keep = plan.keep_atom(analysis)
    pruned = rewrite(analysis, keep, plan.to_json(analysis))
    if check:
        _gate(analysis, pruned, keep)
    return pruned


def _gate(analysis: Analysis, pruned: onnx.ModelProto, keep: np.ndarray) -> None:
    """The checks a pruned model passes before anyone runs it: the ONNX checker as strict
    as the analysed model passes, and the analysed model's interface (its KV cache
    narrowed to the kept heads with --prune-kv-cache)."""
    check_model(pruned, original=analysis.view.model)
    interface = resized(interface_of(analysis.view.model), analysis.cache_sizes(keep))
    check_interface(interface, pruned, shapes_may_change=analysis.prune_outputs)


def mask(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    """The original model with the removed channels' consumer weights zeroed (the oracle)."""
    return masked(analysis, plan.keep_atom(analysis))


def calibrate(
    analysis: Analysis,
    data: CalibrationData,
    *,
    batch: int = 32,
    scatter: bool = False,
    folds: int = 0,
    blocks: bool = False,
    progress: bool = False,
) -> CalibrationStats:
    """Running statistics of every input of the prunable channels' consumers over the
    calibration data (`scatter=True` adds X^T X for least-squares compensation, `folds=k`
    in k parts for `compensate(damp="auto")`; `blocks=True` the Block Influence of every
    block group)."""
    return collect(
        analysis, data, batch=batch, scatter=scatter, folds=folds, blocks=blocks,
        progress=progress,
    )  # fmt: skip


def sensitivity(
    analysis: Analysis,
    data: CalibrationData,
    stats: CalibrationStats,
    *,
    criterion: str = "fisher",
    batch: int = 32,
    seed: int = 0,
    projections: int = 1,
    shared_axes: tuple[int, ...] = (),
) -> None:
    """Add the output-aware statistics ("fisher", "obs-fisher") to `stats`: gradients of
    random projections of the outputs, through the torch lowering (`recovery.fisher`)."""
    from .recovery import require_torch

    require_torch()
    from .recovery.fisher import output_sensitivity  # imports torch

    output_sensitivity(analysis, data, stats, criterion=criterion, batch=batch, seed=seed,
                       projections=projections, shared_axes=shared_axes)  # fmt: skip


def compensate(
    analysis: Analysis,
    plan: Plan,
    stats: CalibrationStats,
    *,
    method: str = "lsq",
    damp: float | str = 0.01,
    check: bool = True,
    notes: list[str] | None = None,
    damping: list[dict] | None = None,
) -> onnx.ModelProto:
    """Like `prune`, with the consumers of removed channels compensated in closed form
    ("bias" or "lsq", see `graphprune.posttrain.compensation`); what could not be
    compensated is appended to `notes` when given. `damp="auto"` needs statistics
    collected with folds (`calibrate(folds=...)`) and appends its choices to `damping`.

    The compensated dense model is analysed again and the same channels (by group name and
    index) are removed from it, so the rewrite is the ordinary one."""
    dense, found = compensated_model(
        analysis, plan.keep_atom(analysis), stats, method=method, damp=damp, damping=damping
    )
    if notes is not None:
        notes.extend(found)
    return _pruned_from(analysis, plan, dense, method, check=check).model


@dataclass
class Compensated:
    """A prune of a compensated dense model: the pruned model, and the analysis and plan
    of the dense one (its `mask` is the pruned model's oracle)."""

    model: onnx.ModelProto
    analysis: Analysis
    plan: Plan

    def reference(self) -> onnx.ModelProto:
        return mask(self.analysis, self.plan)


def compensate_layerwise(
    analysis: Analysis,
    plan: Plan,
    data: CalibrationData,
    *,
    method: str = "lsq",
    damp: float | str = 0.01,
    batch: int = 8,
    check: bool = True,
    progress: bool = False,
    notes: list[str] | None = None,
    damping: list[dict] | None = None,
) -> Compensated:
    """Like `compensate`, with each layer's statistics taken from the layers before it as
    already pruned and repaired, one layer's session at a time
    (`graphprune.posttrain.sequential`); `damp="auto"` folds each layer's statistics."""
    dense, found = repair_sequential(
        analysis, plan.keep_atom(analysis), data, method=method, damp=damp, batch=batch,
        progress=progress, damping=damping,
    )  # fmt: skip
    if notes is not None:
        notes.extend(found)
    return _pruned_from(analysis, plan, dense, method, check=check)


def _pruned_from(analysis, plan, dense, method, *, check: bool) -> Compensated:
    record = plan.to_json(analysis)
    record["options"]["compensate"] = method
    if method == "none":
        again, same = analysis, plan
    else:
        again = analyze_view(GraphView(dense), options=analysis.options)
        same = plan_from_json(again, record)
    pruned = rewrite(again, same.keep_atom(again), record)
    if check:
        _gate(analysis, pruned, plan.keep_atom(analysis))
    return Compensated(pruned, again, same)


def validate(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    *,
    inputs: dict[str, np.ndarray] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    cache: Mapping[str, tuple[int, np.ndarray]] | None = None,
) -> Validation:
    """Run both models in onnxruntime on the same inputs (seeded random unless given);
    `cache`: `Analysis.cache_positions` of a prune with `prune_cache` (the pruned model
    is fed, and compared at, the kept heads of its KV cache)."""
    feeds = inputs or random_inputs(original, input_shapes(original, shapes), seed)
    return compare(original, pruned, feeds, cache=cache)


def save(
    model: onnx.ModelProto, path: str | os.PathLike, *, check: CheckLevel | None = None
) -> None:
    """Write atomically (external data for models over 2 GB); with `check` ("full",
    "structure": `graphprune.io.checks`), only a file that passes the ONNX checker at
    that level lands (`PruneResult.checks` is the level the input passed)."""
    save_model(model, path, check=check)
