"""Calibration inputs: NPZ files keyed by graph input name (samples on axis 0), a directory
of such files, or seeded random inputs for data-free runs, always streamed in batches.

Only one file's arrays are in memory at a time, and only one batch reaches onnxruntime, so
the activations that `graphprune.calibration` reduces to running statistics never grow
with the number of samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import GraphpruneError
from ..io.paths import readable_files, shown
from ..io.protos import graph_inputs, input_dtype
from ..runtime.inputs import id_ranges, random_array, read_npz, shapes_text


@dataclass(frozen=True)
class CalibrationData:
    """Where calibration batches come from: `path` (an NPZ or a directory of them) or
    `random` samples shaped like `shapes` (batch dim excluded), generated from `seed`.
    `mask` names the input whose zeros mark padding positions (`padding_input`)."""

    path: str | None = None
    random: int | None = None
    shapes: dict[str, tuple[int, ...]] | None = None
    seed: int = 0
    mask: str = "auto"

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        return readable_files(self.path, "calibration data", ".npz")


def model_inputs(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """The inputs a caller feeds, with their numpy dtypes."""
    return {info.name: input_dtype(info) for info in graph_inputs(model)}


def batches(
    model: onnx.ModelProto, data: CalibrationData, batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of at most `batch` samples each, in a deterministic order."""
    if batch < 1:
        raise GraphpruneError(f"--calib-batch must be at least 1, got {batch}")
    inputs = model_inputs(model)
    if data.random is not None:
        yield from _random_batches(inputs, data, batch, id_ranges(model))
        return
    for path in data.files():
        arrays = _read(path, inputs)
        count = next(iter(arrays.values())).shape[0]
        for start in range(0, count, batch):
            yield {name: value[start : start + batch] for name, value in arrays.items()}


def sample_shapes(model: onnx.ModelProto, data: CalibrationData) -> dict[str, tuple[int, ...]]:
    """Input shapes of one sample (batch dim 1), read from the first file or the options."""
    if data.random is not None:
        return {name: (1, *shape) for name, shape in (data.shapes or {}).items()}
    arrays = _read(data.files()[0], model_inputs(model))
    return {name: (1, *value.shape[1:]) for name, value in arrays.items()}


def _random_batches(
    inputs: dict[str, np.dtype], data: CalibrationData, batch: int, ranges: dict[str, int]
):
    if data.random < 1:
        raise GraphpruneError(f"--calib-random must be at least 1, got {data.random}")
    shapes = data.shapes or {}
    missing = sorted(set(inputs) - set(shapes))
    if missing:
        raise GraphpruneError(f"no shape for calibration input(s) {', '.join(missing)}")
    for index, start in enumerate(range(0, data.random, batch)):
        rng = np.random.default_rng([data.seed, index])  # batch b is the same for any size
        size = min(batch, data.random - start)
        yield {
            name: random_array(rng, dtype, (size, *shapes[name]), ranges.get(name, 2))
            for name, dtype in inputs.items()
        }


def _read(path: Path, inputs: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    arrays = read_npz(path, "calibration file")
    missing = sorted(set(inputs) - set(arrays))
    unknown = sorted(set(arrays) - set(inputs))
    if missing or unknown:
        what = f"lacks input(s) {', '.join(missing)}" if missing else ""
        if unknown:
            what += ("; " if what else "") + f"has arrays that are no model input: {unknown}"
        raise GraphpruneError(
            f"calibration file {shown(path.name)} {what} (model inputs: {', '.join(inputs)})"
        )
    counts = {value.shape[0] if value.ndim else -1 for value in arrays.values()}
    if len(counts) != 1 or -1 in counts or 0 in counts:
        raise GraphpruneError(
            f"calibration file {shown(path.name)}: arrays must share a non-empty sample axis 0"
        )
    return {name: arrays[name].astype(dtype, copy=False) for name, dtype in inputs.items()}


AUTO_MASK = "attention_mask"  # the name tokenizers and exporters give the padding mask


def padding_input(model: onnx.ModelProto, data: CalibrationData) -> str | None:
    """The input whose zeros mark padding: `data.mask` by name, none for "none", and for
    "auto" an input named attention_mask when the samples come from files (the padding
    a tokenizer wrote; random masks are noise, not padding)."""
    inputs = model_inputs(model)
    if data.mask == "none":
        return None
    if data.mask == "auto":
        return AUTO_MASK if AUTO_MASK in inputs and data.path is not None else None
    if data.mask not in inputs:
        raise GraphpruneError(
            f"--calib-mask {data.mask!r} is no model input (inputs: {', '.join(inputs)})"
        )
    return data.mask


def padding_mask(feeds: dict[str, np.ndarray], name: str | None) -> np.ndarray | None:
    """True at the real (not padding) positions of a batch, [batch, sequence]."""
    if name is None:
        return None
    mask = feeds[name]
    if mask.ndim != 2:
        raise GraphpruneError(
            f"padding mask {name!r} must be [batch, sequence], got shape {list(mask.shape)} "
            "(--calib-mask none counts every position)"
        )
    return mask != 0


def real_positions(lead: tuple[int, ...], mask: np.ndarray) -> np.ndarray | None:
    """Which rows of a tensor whose leading dims (all but the channel axis) are `lead` are
    real positions: [batch, sequence], [sequence, batch] (when they differ) or the two
    flattened batch-major; None when the layout is none of these (all rows count)."""
    batch, sequence = mask.shape
    if lead == (batch, sequence):
        return mask
    if lead == (sequence, batch) and batch != sequence:
        return mask.T
    if lead == (batch * sequence,):
        return mask.reshape(-1)
    return None


def describe(data: CalibrationData) -> str:
    if data.random is not None:
        shapes = shapes_text({k: (1, *v) for k, v in (data.shapes or {}).items()})
        return f"{data.random} random samples of {shapes} (seed {data.seed})"
    return os.fspath(data.path)


@dataclass(frozen=True)
class Place:
    """Where a batch sits in the data: its index, first sample, size and padding mask."""

    index: int
    first: int
    size: int
    mask: np.ndarray | None  # [batch, sequence], True where a position is real


class Places:
    """The place in the data (`Place`: index, first sample, size, padding mask of input
    `mask`) of every batch that `track` passes on, and the samples and padding positions
    counted (callers that feed the batches once fold their values later, layer by layer)."""

    def __init__(self, mask: str | None) -> None:
        self.mask = mask
        self.batches: list[Place] = []
        self.samples = self.positions = self.padding = 0

    def track(self, feeds: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for values in feeds:
            size = next(iter(values.values())).shape[0]
            mask = padding_mask(values, self.mask)
            if mask is not None:
                self.positions += mask.size
                self.padding += int(mask.size - mask.sum())
            self.batches.append(Place(len(self.batches), self.samples, size, mask))
            self.samples += size
            yield values
