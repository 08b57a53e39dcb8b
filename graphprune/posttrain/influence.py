"""Block Influence: how much a residual unit changes its input, from calibration data.

BI = 1 - cos(x, y) between what a unit reads (the residual input of its first block) and
what it writes (the output of its last block's Add), per position (a token, a pixel: the
cosine is taken along the feature axis), averaged over every position of every sample
(ShortGPT, Men et al. 2024). A unit that barely turns its input scores near 0 and is the
first to go. Only the running sum and count are kept per unit, so memory does not grow
with the samples; the tensors of all units are exposed in one run per batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from tqdm import tqdm

from ..core.analysis import Analysis
from ..io.protos import is_float
from ..runtime.sessions import run, session
from .batching import BatchChoice, choose_batch, relax_batch
from .data import CalibrationData, batches, model_inputs

_TINY = 1e-12


def unit_tensors(analysis: Analysis) -> dict[str, tuple[str, str, int]]:
    """Per block group (by name): its input x, its output y and their feature axis."""
    view = analysis.view
    found = {}
    for group in analysis.groups:
        if group.kind != "blocks":
            continue
        first, last = analysis.blocks[group.sources[0]], analysis.blocks[group.sources[-1]]
        x = view.nodes[first.add].input[first.residual]
        found[group.name] = (x, view.nodes[last.add].output[0], last.axis)
    return found


def _element_type(analysis: Analysis, add: str) -> int:
    """The residual stream has the element type of the branch's float weights."""
    view = analysis.view
    for name in analysis.blocks[add].nodes:
        for tensor in view.nodes[name].input:
            data_type = view.constant_type(tensor) if tensor else None
            if data_type is not None and is_float(data_type):
                return data_type
    return onnx.TensorProto.FLOAT


def block_influence(
    analysis: Analysis,
    data: CalibrationData,
    *,
    batch: int,
    provider: str,
    progress: bool = False,
) -> tuple[dict[str, float], int, BatchChoice | None]:
    """Mean 1 - cos(x, y) per block group name over the calibration data, the number of
    samples, and the batch it ran at."""
    pairs = unit_tensors(analysis)
    if not pairs:
        return {}, 0, None
    model = analysis.view.model
    chosen = choose_batch(model, data, batch, provider)
    fed = set(model_inputs(model))
    types = {}
    for group in analysis.groups:
        if group.kind == "blocks":
            x, y, _ = pairs[group.name]
            types[x] = types[y] = _element_type(analysis, group.sources[0])
    tensors = sorted(set(types) - fed)
    exposed = relax_batch(model) if chosen.relax else onnx.ModelProto()
    if not chosen.relax:
        exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, types[name], None) for name in tensors
    )
    sess = session(exposed, provider)
    totals = dict.fromkeys(pairs, 0.0)
    counts = dict.fromkeys(pairs, 0)
    samples = 0
    with tqdm(batches(model, data, chosen.size), desc="block influence", disable=not progress,
              leave=False) as bar:  # fmt: skip
        for feeds in bar:
            values = dict(zip(tensors, run(sess, feeds), strict=True))
            values.update({name: feeds[name] for name in fed if name in feeds})
            for name, (x, y, axis) in pairs.items():
                cosine = _cosine(values[x], values[y], axis)
                totals[name] += float((1.0 - cosine).sum())
                counts[name] += int(cosine.size)
            samples += next(iter(feeds.values())).shape[0]
    return {name: totals[name] / max(counts[name], 1) for name in pairs}, samples, chosen


def _cosine(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """Cosine similarity along `axis` at every other position, in float64."""
    x, y = x.astype(np.float64), np.broadcast_to(y, x.shape).astype(np.float64)
    dot = (x * y).sum(axis=axis)
    norms = np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))
    return dot / np.maximum(norms, _TINY)
