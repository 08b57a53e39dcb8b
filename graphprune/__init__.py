"""graphprune: structural channel pruning for ONNX models exported from any framework.

import graphprune as gp

model = gp.load("model.onnx")
analysis = gp.analyze(model)
plan = gp.plan(analysis, ratio=0.5, criterion="l2")
pruned = gp.prune(analysis, plan)
result = gp.validate(model, pruned)
gp.save(pruned, "model.pruned.onnx")
"""

from __future__ import annotations

import os

import onnx

from .analysis import Analysis, Group, analyze_view
from .budget import Budget
from .calibdata import CalibrationData
from .calibration import CalibrationStats, collect
from .compensation import prune_compensated
from .errors import GraphpruneError
from .graph import GraphView
from .loading import load_model
from .planning import Plan, make_plan, plan_from_json
from .rewrite import masked, rewrite
from .saving import save_model
from .validation import compare, input_shapes, random_inputs

__version__ = "0.1.0"
__all__ = [
    "Analysis",
    "Budget",
    "CalibrationData",
    "CalibrationStats",
    "GraphView",
    "GraphpruneError",
    "Group",
    "Plan",
    "analyze",
    "calibrate",
    "compensate",
    "load",
    "mask",
    "plan",
    "plan_from_json",
    "prune",
    "save",
    "validate",
]  # fmt: skip


def load(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model (path with external data, or a ModelProto, which is copied)."""
    return load_model(source)


def analyze(
    model: onnx.ModelProto,
    progress: bool = False,
    approximate_norms: bool = False,
    prune_outputs: bool = False,
) -> Analysis:
    """Find every group of coupled channels, and why the unprunable ones are.

    `approximate_norms=True` also prunes channels that a normalization over channels
    mixes (LayerNorm, RMSNorm: inexact, marked in `Group.approximations`; needed for a
    transformer's hidden size); `prune_outputs=True` lets model outputs lose channels."""
    return analyze_view(GraphView(model), progress, approximate_norms, prune_outputs)


def plan(analysis: Analysis, ratio: float, **options) -> Plan:
    """Choose the channels to remove; see `graphprune.planning.make_plan` for options."""
    return make_plan(analysis, ratio, **options)


def prune(analysis: Analysis, plan: Plan, check: bool = True) -> onnx.ModelProto:
    """The pruned model; the plan is recorded in its metadata ("graphprune.plan")."""
    pruned = rewrite(analysis, plan.keep_atom(analysis), plan.to_json(analysis))
    if check:
        _check(pruned)
    return pruned


def mask(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    """The original model with the removed channels' consumer weights zeroed (the oracle)."""
    return masked(analysis, plan.keep_atom(analysis))


def calibrate(
    analysis: Analysis,
    data: CalibrationData,
    batch: int = 32,
    scatter: bool = False,
    progress: bool = False,
) -> CalibrationStats:
    """Running statistics of every input of the prunable channels' consumers over the
    calibration data (`scatter=True` adds X^T X for least-squares compensation)."""
    return collect(analysis, data, batch=batch, scatter=scatter, progress=progress)


def compensate(
    analysis: Analysis,
    plan: Plan,
    stats: CalibrationStats,
    method: str = "lsq",
    damp: float = 0.01,
    check: bool = True,
) -> onnx.ModelProto:
    """Like `prune`, with the consumers of removed channels compensated in closed form
    ("bias" or "lsq", see `graphprune.compensation`)."""
    pruned, _ = prune_compensated(analysis, plan, stats, method, damp)
    if check:
        _check(pruned)
    return pruned


def validate(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    inputs: dict | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> dict:
    """Run both models in onnxruntime on the same inputs (random unless given)."""
    feeds = inputs or random_inputs(original, input_shapes(original, shapes), seed)
    return compare(original, pruned, feeds)


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write atomically (external data for models over 2 GB)."""
    save_model(model, path)


def _check(model: onnx.ModelProto) -> None:
    try:
        if model.ByteSize() < 2**31 - 2**20:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0]
        raise GraphpruneError(f"the pruned model fails the ONNX checker: {first}") from None
