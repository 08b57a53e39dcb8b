"""The ONNX checker as a gate: a model graphprune writes must pass what its input passes."""

from __future__ import annotations

import onnx

from ..errors import GraphpruneError, first_line
from .large import heavy, weightless

_CHECKER_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def check_model(model: onnx.ModelProto, *, original: onnx.ModelProto | None = None) -> None:
    """Raise a one-line GraphpruneError when the ONNX checker rejects `model`: the full
    checker, or the strictest check `original` passes. onnxruntime runs graphs onnx cannot
    check (its contrib ops written into the default domain, as its transformer optimizer
    does); those rest on onnxruntime's validation alone. Models over the protobuf limit
    (or with hundreds of megabytes of weights, `graphprune.io.large.heavy`) are checked
    without their large weights, typed graph inputs in their place: the checker would
    serialize them whole (twice the model), and their data was checked at load."""
    if heavy(model):
        model = weightless(model)
    if original is not None and heavy(original):
        original = weightless(original)
    for full_check in (True, False):
        if original is None or _passes(original, full_check):
            try:
                onnx.checker.check_model(model, full_check=full_check)
            except _CHECKER_ERRORS as error:
                message = f"the pruned model fails the ONNX checker: {first_line(error)}"
                raise GraphpruneError(message) from None
            return


def _passes(model: onnx.ModelProto, full_check: bool) -> bool:
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except _CHECKER_ERRORS:
        return False
    return True
