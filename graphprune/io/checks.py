"""The ONNX checker as a gate: a model graphprune writes must pass what its input passes."""

from __future__ import annotations

import onnx

from ..errors import GraphpruneError
from .protos import PROTOBUF_LIMIT


def check_model(model: onnx.ModelProto) -> None:
    """Raise a one-line GraphpruneError when the full ONNX checker rejects `model` (models
    over the protobuf limit are not checked in memory)."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0]
        raise GraphpruneError(f"the pruned model fails the ONNX checker: {first}") from None
