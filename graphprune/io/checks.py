"""The ONNX checker as a gate: a model graphprune writes must pass what its input passes.

The input's *level* is the strictest check it passes: "full" (the checker with strict
shape inference), "structure" (the checker alone) or "none". The pruned model is held to
that level in memory (`check_model`) and again on the exact bytes written
(`check_file`, the staged file before it is renamed into place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx

from ..errors import GraphpruneError, first_line
from .large import heavy, weightless

CheckLevel = Literal["full", "structure", "none"]
# Full shape inference raises ValueError for an element type onnx does not know (a corrupt
# or future type code): that model fails the check like any other.
_CHECKER_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError)


def check_level(model: onnx.ModelProto) -> CheckLevel:
    """The strictest check `model` passes. onnxruntime runs graphs onnx cannot check (its
    contrib ops written into the default domain, as its transformer optimizer does);
    those rest on onnxruntime's validation alone."""
    model = _checkable(model)
    for level in ("full", "structure"):
        if _problem(model, level) is None:
            return level
    return "none"


def check_model(
    model: onnx.ModelProto,
    *,
    original: onnx.ModelProto | None = None,
    level: CheckLevel | None = None,
    what: str = "the pruned model",
) -> None:
    """Raise a one-line GraphpruneError when the ONNX checker rejects `model` at `level`
    (default: the strictest check `original` passes; the full checker without either).
    Models over the protobuf limit (or with hundreds of megabytes of weights,
    `graphprune.io.large.heavy`) are checked without their large weights, typed graph
    inputs in their place: the checker would serialize them whole (twice the model), and
    their data was checked at load."""
    if level is None:
        level = "full" if original is None else check_level(original)
    problem = _problem(_checkable(model), level)
    if problem is not None:
        raise GraphpruneError(f"{what} fails the ONNX checker: {problem}")


def check_file(path: str | Path, level: CheckLevel) -> None:
    """`check_model` on the model file at `path` as written (its external data stays on
    disk: large weights are checked by type and dims, as `check_model` checks them)."""
    if level == "none":
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # a file we wrote that onnx cannot read back is a failure
        message = f"the written model cannot be read back: {first_line(error)}"
        raise GraphpruneError(message) from None
    check_model(model, level=level, what="the written model")


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    return weightless(model) if heavy(model) else model


def _problem(model: onnx.ModelProto, level: CheckLevel) -> str | None:
    if level == "none":
        return None
    try:
        onnx.checker.check_model(model, full_check=level == "full")
    except _CHECKER_ERRORS as error:
        return first_line(error)
    return None
