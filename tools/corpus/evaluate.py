"""Evaluate one ONNX model the way a user would: analyze (timed), then at each ratio plan
and prune through `graphprune.api`, run the ONNX checker, run original and pruned model in
onnxruntime, and compare the pruned model with the masking oracle (`gp.mask`).

The pruned model must keep the interface of the model as given (`graphprune.io.interface`:
the same required inputs and outputs; stage "interface"). Each failure is recorded with its
stage (analyze, prune, checker, interface, runtime, oracle) and a
one-line reason; graphprune's own errors (GraphpruneError) keep their message, anything
else (a bug) also names the innermost graphprune frame. Nothing here raises.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from typing import Any

import numpy as np
import onnx

import graphprune as gp
from graphprune.core.metrics import count_params
from graphprune.errors import GraphpruneError
from graphprune.io.checks import check_model
from graphprune.io.interface import Interface, interface_of, interface_problem
from graphprune.runtime.inputs import input_shapes, random_inputs
from graphprune.runtime.sessions import run, session

RATIOS = (0.3, 0.5)
PASS_RATIO = 0.5
TOLERANCE = {np.dtype(np.float16): 2e-2}  # fp16 rounds at ~1e-3 per op; others: DEFAULT
DEFAULT_TOLERANCE = 1e-4
SCALE_FLOOR = 1e-2  # outputs ~0 everywhere leave only rounding: compare at this scale


class StageError(Exception):
    """A failure at a named stage."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def reason_of(error: BaseException) -> str:
    """One line: the message of a GraphpruneError; type, message and the innermost
    graphprune frame of anything else (a traceback inside graphprune is a bug)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0][:300] if lines else ""
    if isinstance(error, GraphpruneError):  # InternalError is not one: it is a bug
        return text
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "graphprune/" in f.filename]
    where = ""
    if frames:
        frame = frames[-1]
        where = f" [at {frame.filename.split('graphprune/', 1)[-1]}:{frame.lineno} {frame.name}]"
    return f"{type(error).__name__}: {text}{where}"


def _stage(stage: str, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except StageError:
        raise
    except Exception as error:
        raise StageError(stage, reason_of(error)) from error


def feeds_for(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Seeded random inputs; symbolic batch dims become `batch` (2 tests dynamic exports)."""
    return random_inputs(model, input_shapes(model, batch=batch), seed=0)


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run(session(model, "CPUExecutionProvider"), feeds)


def _outputs_after_load(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    try:
        _outputs(model, feeds)
    except Exception as error:
        raise GraphpruneError(f"the model as gp.load returns it does not run: {error}") from None


def deviation(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest |difference| over max(max |expected|, SCALE_FLOOR), NaN-aware: NaN where
    both have NaN is equal; inf when shapes or NaN positions differ."""
    worst = 0.0
    for a, b in zip(expected, actual, strict=True):
        if a.shape != b.shape:
            return float("inf")
        if not np.issubdtype(a.dtype, np.floating):
            worst = max(worst, float(np.any(a != b)) * float("inf") if a.size else 0.0)
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a64), np.isnan(b64)):
            return float("inf")
        finite = ~np.isnan(a64)
        if not finite.any():
            continue
        scale = max(float(np.abs(a64[finite]).max()), SCALE_FLOOR)
        worst = max(worst, float(np.abs(a64[finite] - b64[finite]).max()) / scale)
    return worst


def _tolerance(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    dtypes = {value.dtype for value in feeds.values()}
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    if fp16:
        dtypes.add(np.dtype(np.float16))
    return max([TOLERANCE.get(d, DEFAULT_TOLERANCE) for d in dtypes] or [DEFAULT_TOLERANCE])


def _prune_once(
    analysis, model, ratio, feeds, base_outputs, tolerance, interface: Interface
) -> dict[str, Any]:
    """One ratio: returns the row, raising StageError at the first failing stage."""
    options = gp.PlanOptions(ratio=ratio, criterion="l2")
    plan = _stage("prune", gp.plan, analysis, options)
    pruned = _stage("prune", gp.prune, analysis, plan, check=False)
    _stage("checker", check_model, pruned)
    problem = interface_problem(interface, pruned)
    if problem is not None:
        raise StageError("interface", problem)
    actual = _stage("runtime", _outputs, pruned, feeds)
    for a, b in zip(base_outputs, actual, strict=True):
        if a.shape != b.shape:
            raise StageError("runtime", f"output shape changed {list(a.shape)} -> {list(b.shape)}")
    oracle = _stage("oracle", gp.mask, analysis, plan)
    expected = _stage("oracle", _outputs, oracle, feeds)
    error = deviation(expected, actual)
    if not error < tolerance:
        raise StageError("oracle", f"pruned differs from gp.mask: rel {error:.3g} >= {tolerance:g}")
    return {
        "params_removed": 1 - count_params(pruned) / max(count_params(model), 1),
        "oracle_rel": error,
        "vs_original_rel": deviation(base_outputs, actual),
    }


def barriers(analysis) -> Counter:
    """First reason of every unprunable group, by op type and message."""
    return Counter(str(group.reasons[0]) for group in analysis.groups if group.reasons)


def evaluate(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray] | None = None,
    batch: int = 1,
    *,
    approximate_dynamic_quant: bool = False,
) -> dict[str, Any]:
    """The corpus row of one model: status pass | blocked | fail, and every failure
    (`approximate_dynamic_quant`: analyzed with that option, as a dynamically quantized
    model is pruned)."""
    row: dict[str, Any] = {"nodes": len(model.graph.node), "failures": [], "ratios": {}}
    interface = interface_of(model)  # as given, before gp.load folds anything
    try:
        feeds = feeds or feeds_for(model, batch)
        base = _stage("original", _outputs, model, feeds)
        loaded = _stage("analyze", gp.load, model)
        row["params"] = count_params(loaded)
        # gp.load folds values known before the run: the folded model must still run.
        _stage("analyze", _outputs_after_load, loaded, feeds)
        started = time.perf_counter()
        analysis = _stage(
            "analyze", gp.analyze, loaded, approximate_dynamic_quant=approximate_dynamic_quant
        )
        row["analysis_s"] = round(time.perf_counter() - started, 3)
    except StageError as error:
        # An original model onnxruntime cannot run is the export's failure, not graphprune's.
        row["status"] = "export-failed" if error.stage == "original" else "fail"
        row["failures"].append({"ratio": None, "stage": error.stage, "reason": error.reason})
        return row
    row["groups"] = len(analysis.groups)
    row["prunable"] = len(analysis.prunable_groups)
    row["barriers"] = dict(barriers(analysis).most_common(5))
    if not analysis.prunable_groups:
        # Every group names its barrier; with no group at all, the ops no rule maps
        # (quantized kernels, If bodies holding the network) are what analyze names.
        named = all(group.reasons for group in analysis.groups) and bool(
            analysis.groups or analysis.ops_without_rule
        )
        row["status"] = "blocked" if named else "fail"
        if not named:
            reason = "no op named" if not analysis.groups else "unprunable group, no reason"
            row["failures"].append({"ratio": None, "stage": "analyze", "reason": reason})
        return row
    tolerance = _tolerance(loaded, feeds)
    for ratio in RATIOS:
        try:
            row["ratios"][str(ratio)] = _prune_once(
                analysis, loaded, ratio, feeds, base, tolerance, interface
            )
        except StageError as error:
            row["failures"].append({"ratio": ratio, "stage": error.stage, "reason": error.reason})
    row["status"] = "pass" if str(PASS_RATIO) in row["ratios"] else "fail"
    return row
