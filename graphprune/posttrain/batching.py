"""The batch size calibration runs at, found by running the model once.

Exports often accept less than their input declares: the dynamo exporter specialises a
batch traced at 1 inside the graph (GPT-2, LLaMA, Qwen2 fail at batch 32 with a symbolic
batch input), and a static batch of 1 may or may not be a real limit. One probe settles
it: the first calibration batch, and its first sample alone. The requested batch is kept
when it runs and its first sample's outputs equal the single run (so samples do not leak
into each other through a reshape that folds the batch); otherwise calibration runs at
the model's static batch, or 1, and says so. Statistics do not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..io.protos import graph_inputs
from ..runtime.sessions import run, session, try_run
from ..runtime.validation import deviation
from .data import CalibrationData, batches, model_inputs

AGREEMENT = 1e-3  # relative deviation between a batched and a single sample's outputs


@dataclass(frozen=True)
class BatchChoice:
    """The batch to calibrate at; `relax` makes a static batch dim symbolic so that it
    runs; `note` says why the requested batch was not used."""

    size: int
    relax: bool = False
    note: str | None = None


def choose_batch(
    model: onnx.ModelProto, data: CalibrationData, batch: int, provider: str
) -> BatchChoice:
    """`batch` when the model runs it as a batch (see the module's doc), else a size it
    runs, with a note."""
    static = static_batch(model)
    first = next(batches(model, data, batch), None)
    if first is None:
        return BatchChoice(batch)
    size = next(iter(first.values())).shape[0]
    if size == (static or 1):  # nothing to learn from this batch: the size that surely runs
        return BatchChoice(static or 1)
    relax = static is not None
    problem = _batch_problem(relax_batch(model) if relax else model, first, provider)
    if problem is None:
        return BatchChoice(batch, relax)
    if static:
        note = f"the model's batch is fixed at {static} (at batch {size}: {problem})"
    else:
        note = f"the model does not run at batch {size} ({problem})"
    return BatchChoice(static or 1, note=f"{note}; calibrated at batch {static or 1}")


def _batch_problem(model: onnx.ModelProto, feeds: dict[str, np.ndarray], provider: str):
    """Why `model` cannot run `feeds` as one batch, None when it can."""
    sess = session(model, provider)
    batched, error = try_run(sess, feeds)
    if error is not None:
        return f"onnxruntime: {error}"
    single = run(sess, {name: value[:1] for name, value in feeds.items()})
    size = next(iter(feeds.values())).shape[0]
    for a, b in zip(batched, single, strict=True):
        if a.shape[:1] == (size,) and b.shape[:1] == (1,):
            a = a[:1]
        if a.shape != b.shape or (deviation(b, a)["max_rel"] or 0.0) > AGREEMENT:
            return "samples of one batch change each other's outputs"
    return None


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed size of the inputs' axis 0, when every input has the same one."""
    sizes = set()
    for info in graph_inputs(model):
        dims = info.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value"):
            return None
        sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def relax_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs' axis 0 is symbolic, with no inferred shapes that would pin it
    (the outputs' shapes are dropped too, as they repeat the fixed batch)."""
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    del relaxed.graph.value_info[:]
    inputs = set(model_inputs(model))
    for info in relaxed.graph.input:
        if info.name in inputs:
            dim = info.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "calibration_batch"
    for info in relaxed.graph.output:
        info.type.tensor_type.ClearField("shape")
    return relaxed
