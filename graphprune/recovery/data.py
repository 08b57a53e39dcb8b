"""What recovery trains on: the calibration format (an NPZ keyed by input name, samples on
axis 0, or a folder of them) with an optional array of labels, or seeded random samples
(self-distillation where no data exists). A source is one file's samples: samples of one
file share their shapes (a folder of NPZs grouped by sequence length batches without
padding), so batches never mix files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import GraphpruneError
from ..posttrain.data import CalibrationData, batches, model_inputs
from ..runtime.inputs import read_npz


@dataclass(frozen=True)
class TrainingData:
    """`path` (NPZ or folder of them) or `random` samples shaped like `shapes` (batch dim
    excluded); `labels` names the array of labels in the files (not a model input)."""

    path: str | None = None
    random: int | None = None
    shapes: dict[str, tuple[int, ...]] | None = None
    labels: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.random is None):
            raise GraphpruneError("give training data: --data NPZ_OR_DIR or --data-random N")
        if self.random is not None and self.labels:
            raise GraphpruneError("--labels needs --data files that hold the labels")
        if self.random is not None and self.random < 1:
            raise GraphpruneError(f"--data-random must be at least 1, got {self.random}")

    def describe(self) -> str:
        if self.random is not None:
            return f"{self.random} random samples (seed {self.seed})"
        return os.fspath(self.path) + (f", labels {self.labels!r}" if self.labels else "")


@dataclass
class Source:
    """One file's samples (inputs and labels), read whole like a calibration file."""

    name: str
    arrays: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return next(iter(self.arrays.values())).shape[0]


def sources(model: onnx.ModelProto, data: TrainingData, batch: int):
    """The data's sources in a fixed order, one at a time (a generator: memory holds one)."""
    inputs = model_inputs(model)
    if data.random is not None:
        calibration = CalibrationData(random=data.random, shapes=data.shapes, seed=data.seed)
        parts = list(batches(model, calibration, batch))
        yield Source("random", {n: np.concatenate([p[n] for p in parts]) for n in inputs})
        return
    for path in CalibrationData(path=data.path).files():
        yield Source(path.name, _read(path, inputs, data.labels))


def _read(path: Path, inputs: dict[str, np.dtype], labels: str | None) -> dict[str, np.ndarray]:
    arrays = read_npz(path, "training file")
    wanted = [*inputs, *([labels] if labels else [])]
    missing = sorted(set(wanted) - set(arrays))
    if missing:
        raise GraphpruneError(
            f"training file {path.name} lacks {', '.join(missing)} "
            f"(model inputs: {', '.join(inputs)}{'; labels: ' + labels if labels else ''})"
        )
    counts = {arrays[name].shape[0] if arrays[name].ndim else -1 for name in wanted}
    if len(counts) != 1 or -1 in counts or 0 in counts:
        raise GraphpruneError(
            f"training file {path.name}: arrays must share a non-empty sample axis 0"
        )
    out = {name: arrays[name].astype(dtype, copy=False) for name, dtype in inputs.items()}
    if labels:
        if arrays[labels].dtype.kind not in "iu":
            raise GraphpruneError(f"training file {path.name}: labels {labels!r} are not integers")
        out[labels] = arrays[labels].astype(np.int64)
    return out


def fingerprint(data: TrainingData) -> str:
    """Changes when the data does (paths, sizes, modification times) or its options do."""
    digest = hashlib.sha256(repr((data.random, data.shapes, data.labels, data.seed)).encode())
    if data.path is not None:
        for path in CalibrationData(path=data.path).files():
            stat = path.stat()
            digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
