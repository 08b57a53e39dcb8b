"""Calibration one layer at a time (`--calib-mode sequential`): statistics and repair for
models whose onnxruntime session does not fit in memory, and the error-correcting order
of layer-wise pruning.

The model is split at its residual stream (`graphprune.runtime.stages`): the calibration
batches run through the first stage (embedding, mask, rotary tables), then through one
layer at a time, the activations that cross layers waiting on disk. Peak memory is one
layer's session and one batch of activations, whatever the model's size.

- `collect_sequential`: the dense model's statistics of every consumer (what the
  calibrated criteria score), layer by layer. The same moments as `statistics.collect`
  (the same Moments, folded per batch), only gathered from one layer's run at a time.
- `repair_sequential`: for a chosen plan, each layer in order: its consumers' statistics
  (with X^T X for least squares) are taken from the outputs of the layers before it as
  *already pruned and repaired*, its consumers are compensated from them
  (`compensation.compensated_model`, written into one working copy), and the layer is run
  again with the removed channels zeroed (exactly what removal computes, wherever the
  channels end in an absorbing weight) to give the next layer its inputs. This is the order
  of SparseGPT (Frantar & Alistarh 2023) and of Putri et al.'s layer-wise head pruning
  with least-squares updates of the output projection: each layer's repair also absorbs the
  error of the layers before it. Only one layer's X^T X is held at a time.

Weights written by the repair stay where the model's were: in memory for a model held in
memory, spilled to a private file (`io.external.spill`) for one whose weights are on disk.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from ..core.analysis import Analysis
from ..core.channels import MaskInput, SliceConstant, SliceGroupedInput
from ..errors import GraphpruneError
from ..io.external import is_external, spill, to_array
from ..runtime.sessions import execution_provider
from ..runtime.stages import Split, StagedRun, split_layers
from .compensation import compensated_model
from .damping import FOLDS
from .data import CalibrationData, Places, batches, padding_input
from .statistics import (
    CalibrationStats,
    Consumer,
    add_moments,
    find_consumers,
    fold_values,
    merge_folds,
)

_SPILL_BYTES = 2**20  # repaired weights from this size on go to disk (models on disk)


def collect_sequential(
    analysis: Analysis,
    data: CalibrationData,
    *,
    batch: int = 8,
    scatter: bool = False,
    provider: str | None = None,
    progress: bool = False,
) -> CalibrationStats:
    """Statistics of every consumer of the dense model, gathered one layer at a time."""
    split = split_layers(analysis.view)
    consumers = find_consumers(analysis)
    model = analysis.view.model
    stats = _empty_stats(analysis, consumers, scatter, provider, mask=padding_input(model, data))
    stats.batch = batch
    stats.notes.append(f"calibrated layer by layer ({split.stages - 1} layers)")
    staged = StagedRun(model, split, provider=stats.provider, progress=progress)
    places = Places(stats.mask)
    try:
        staged.feed(places.track(batches(model, data, batch)))
        stats.samples, stats.positions, stats.padding = (
            places.samples,
            places.positions,
            places.padding,
        )
        by_stage = _by_stage(consumers, split)
        for stage in range(split.stages):
            tensors = {c.tensor for c in by_stage.get(stage, [])}
            staged.run_stage(
                stage, expose=sorted(tensors), advance=stage < split.stages - 1,
                inspect=lambda b, values, t=tensors: fold_values(
                    stats, {k: v for k, v in values.items() if k in t}, places.batches[b]),
            )  # fmt: skip
    finally:
        staged.close()
    return stats


def repair_sequential(
    analysis: Analysis,
    keep_atom: np.ndarray,
    data: CalibrationData,
    *,
    method: str = "lsq",
    damp: float | str = 0.01,
    batch: int = 8,
    provider: str | None = None,
    progress: bool = False,
    damping: list[dict] | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """The dense model with every consumer of removed channels compensated layer by layer
    from the pruned layers' outputs (see the module doc), and notes on what was not;
    `damp="auto"`'s choices are appended to `damping`."""
    model = analysis.view.model
    on_disk = any(is_external(t) for t in model.graph.initializer)
    working = onnx.ModelProto()
    working.CopyFrom(model)
    split = split_layers(analysis.view)
    changed = [c for c in find_consumers(analysis) if not keep_atom[c.positions.ravel()].all()]
    by_stage = _by_stage(changed, split)
    zeroed = _absorbing_by_stage(analysis, keep_atom, split)
    notes: list[str] = []
    staged = StagedRun(working, split, provider=provider or execution_provider(),
                       progress=progress)  # fmt: skip
    mask = padding_input(model, data)
    folds = FOLDS if method == "lsq" and damp == "auto" else 0
    places = Places(mask)
    try:
        staged.feed(places.track(batches(model, data, batch)))
        for stage in range(split.stages):
            mine = by_stage.get(stage, [])
            if mine and method != "none":
                stats = _empty_stats(analysis, mine, method == "lsq", staged.provider, mask, folds)
                tensors = {c.tensor for c in mine}
                staged.run_stage(
                    stage, working, expose=sorted(tensors), advance=False,
                    inspect=lambda b, values, t=tensors, s=stats: fold_values(
                        s, {k: v for k, v in values.items() if k in t}, places.batches[b]),
                )  # fmt: skip
                merge_folds(stats)
                working, found = compensated_model(
                    analysis, keep_atom, stats, method=method, damp=damp, damping=damping,
                    into=working,
                )  # fmt: skip
                notes += found
                if on_disk:
                    _spill_written(working)
            if stage == split.stages - 1:
                break  # nothing after the last layer reads its outputs
            overrides = _zeroed_weights(working, analysis, keep_atom, zeroed.get(stage, []))
            staged.run_stage(stage, working, overrides=overrides)
    finally:
        staged.close()
    return working, notes


def _empty_stats(
    analysis: Analysis, consumers: list[Consumer], scatter: bool, provider,
    mask: str | None = None, folds: int = 0,
) -> CalibrationStats:  # fmt: skip
    """Moments to fold into, as `statistics.collect` sets them up (`add_moments`), padding
    positions of input `mask` left out."""
    stats = CalibrationStats(consumers, {}, provider=provider or execution_provider(), mask=mask)
    add_moments(stats, analysis, scatter=scatter, folds=folds)
    return stats


def _by_stage(consumers: list[Consumer], split: Split) -> dict[int, list[Consumer]]:
    found: dict[int, list[Consumer]] = defaultdict(list)
    for consumer in consumers:
        found[split.stage_of[consumer.node]].append(consumer)
    return found


def _absorbing_by_stage(analysis: Analysis, keep_atom: np.ndarray, split: Split):
    """The absorbing edits that remove something, per stage: zeroing their removed
    positions is what removal computes (the oracle's rule)."""
    found: dict[int, list[SliceConstant]] = defaultdict(list)
    for edit in analysis.edits:
        if isinstance(edit, MaskInput) and edit.fill != 0.0 and not keep_atom[edit.atoms].all():
            raise GraphpruneError(
                "layer-by-layer repair cannot run a model that loses experts (routing masks)"
            )
        if not getattr(edit, "absorbs", False) or keep_atom[edit.atoms].all():
            continue
        if isinstance(edit, SliceGroupedInput) or edit.quantized is not None or edit.pack > 1:
            raise GraphpruneError(
                f"layer-by-layer repair cannot zero the removed channels of '{edit.node}' "
                "(grouped or quantized weights)"
            )
        found[split.stage_of.get(edit.node, 0)].append(edit)
    return found


def _zeroed_weights(working, analysis, keep_atom, edits) -> dict[str, dict[int, np.ndarray]]:
    """Per node and input, the weight with the removed positions zeroed."""
    if not edits:
        return {}
    nodes = {node.name: node for node in working.graph.node}
    tensors = {t.name: t for t in working.graph.initializer}
    overrides: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for edit in edits:
        mine = overrides[edit.node]
        if edit.input_index not in mine:
            name = nodes[edit.node].input[edit.input_index]
            value = to_array(tensors[name]) if name in tensors else analysis.view.constant(name)
            if value is None:
                raise GraphpruneError(f"'{edit.node}': its weight is not a constant")
            mine[edit.input_index] = np.array(value)
        removed = np.nonzero(~keep_atom[edit.atoms])[0]
        index = [slice(None)] * mine[edit.input_index].ndim
        index[edit.axis] = removed
        mine[edit.input_index][tuple(index)] = 0
    return overrides


def _spill_written(model: onnx.ModelProto) -> None:
    """Move the large weights the repair wrote in memory to the private spill file."""
    for tensor in model.graph.initializer:
        if not is_external(tensor) and tensor.ByteSize() >= _SPILL_BYTES:
            spill(tensor, onnx.numpy_helper.to_array(tensor))
