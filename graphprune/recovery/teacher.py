"""The teacher's side of distillation: which tensors of the pruned model correspond to
the dense model's, and the dense model's values of them, computed once in onnxruntime
(CUDA when present) and kept on disk for every epoch.

Correspondence: pruning keeps tensor names, and a tensor whose shape did not change
holds the same quantity in both models. The ones worth matching are where a pruned region
ends: a node that reads narrowed activations and writes an unpruned one (a bottleneck's
last convolution, a transformer's attention output and MLP down projections). Shapes are
measured by running both models on one sample in the lowering, so contrib ops and
symbolic dims need no shape inference.

The cache: one `.npy` per file of the data and per tensor (inputs, labels, the teacher's
outputs and features), written as onnxruntime returns each batch (memory: one batch) and
read back by rows (a memory map), so an epoch shuffles samples without holding them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from ..errors import GraphpruneError
from ..posttrain.batching import relax_batch, static_batch
from ..runtime.sessions import execution_provider, run, session, try_run
from ..runtime.validation import deviation
from ..version import __version__
from .data import Source, TrainingData, fingerprint, sources
from .lowering import LoweredModel, feeds_to_torch, stored_tensors

MANIFEST = "manifest.json"


def feature_points(
    student: onnx.ModelProto, teacher: onnx.ModelProto, sample: dict[str, np.ndarray]
) -> list[str]:
    """Tensors where a pruned region of `student` ends (see the module doc), in order."""
    shapes = {}
    for name, model in (("student", student), ("teacher", teacher)):
        record: dict = {}
        with torch.no_grad():
            LoweredModel(model)(feeds_to_torch(sample, torch.device("cpu")), [], record=record)
        shapes[name] = record
    s, t = shapes["student"], shapes["teacher"]
    constants = set(stored_tensors(student))
    outputs = {o.name for o in student.graph.output}
    points = []
    for node in student.graph.node:
        narrowed = any(
            name in s and name in t and s[name][0] != t[name][0]
            for name in node.input if name and name not in constants
        )  # fmt: skip
        if not narrowed:
            continue
        for name in node.output:
            same = name in s and name in t and s[name] == t[name]
            if same and s[name][1] and name not in outputs:  # float, unpruned, no output
                points.append(name)
    return points


@dataclass(frozen=True)
class CacheKey:
    """What the teacher's values depend on: the teacher, the data, the tensors."""

    teacher: str
    data: str
    targets: tuple[str, ...]

    def digest(self) -> str:
        text = json.dumps([__version__, self.teacher, self.data, list(self.targets)])
        return hashlib.sha256(text.encode()).hexdigest()


def model_digest(model: onnx.ModelProto) -> str:
    digest = hashlib.sha256()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:  # hashed one by one: no 2 GB serialization
        digest.update(tensor.SerializeToString())
    del copy.graph.initializer[:]
    digest.update(copy.SerializeToString())
    return digest.hexdigest()


class TargetCache:
    """Per file of the data: its sample count and one memory-mapped array per tensor."""

    def __init__(self, folder: Path, files: list[dict], targets: list[str], inputs: list[str],
                 labels: str | None) -> None:  # fmt: skip
        self.folder, self.files, self.targets = folder, files, targets
        self.inputs, self.labels = inputs, labels
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    @property
    def counts(self) -> list[int]:
        return [f["count"] for f in self.files]

    def rows(self, file: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The cached tensors of some samples of one file, in the order of `rows`."""
        out = {}
        for name, stored in self.files[file]["arrays"].items():
            key = (file, name)
            if key not in self._maps:
                self._maps[key] = np.load(self.folder / stored, mmap_mode="r")
            out[name] = np.asarray(self._maps[key][rows])
        return out


def build_cache(
    teacher: onnx.ModelProto, data: TrainingData, *, features: list[str], batch: int,
    folder: Path, progress: bool = False,
) -> tuple[TargetCache, int, str | None]:  # fmt: skip
    """The teacher's outputs and `features` on every sample, in `folder` (reused when it
    holds them already); the batch the models run at, and a note when it is below the
    batch asked for (a graph that fixes its batch)."""
    outputs = [o.name for o in teacher.graph.output]
    targets = outputs + [f for f in features if f not in outputs]
    inputs = _input_names(teacher)
    key = CacheKey(model_digest(teacher), fingerprint(data), tuple(targets)).digest()
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("key") == key and saved.get("batch") == batch:
            cache = TargetCache(folder, saved["files"], targets, inputs, data.labels)
            return cache, saved["size"], saved.get("note")
    provider = execution_provider()
    size, relax, note = _teacher_batch(teacher, data, batch, provider)
    exposed = _exposing(relax_batch(teacher) if relax else teacher, targets)
    sess = session(exposed, provider)
    files = []
    bar = tqdm(desc="teacher", unit="sample", disable=not progress, leave=False)
    for index, source in enumerate(sources(teacher, data, batch)):
        files.append(_cache_source(sess, source, index, folder, inputs, targets, data.labels,
                                   size, bar))  # fmt: skip
    bar.close()
    record = {"key": key, "batch": batch, "size": size, "note": note, "files": files}
    manifest.write_text(json.dumps(record, indent=1))
    return TargetCache(folder, files, targets, inputs, data.labels), size, note


def _input_names(model: onnx.ModelProto) -> list[str]:
    stored = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in stored]


def _cache_source(sess, source: Source, index: int, folder: Path, inputs, targets, labels,
                  size: int, bar) -> dict:  # fmt: skip
    names = {**{n: f"in{i}" for i, n in enumerate(inputs)},
             **{n: f"out{i}" for i, n in enumerate(targets)}}  # fmt: skip
    if labels:
        names[labels] = "labels"
    arrays = {name: f"f{index:05d}-{short}.npy" for name, short in names.items()}
    maps: dict[str, np.ndarray] = {}
    count = source.count
    for name in [*inputs, *([labels] if labels else [])]:
        value = source.arrays[name]
        maps[name] = np.lib.format.open_memmap(folder / arrays[name], "w+", value.dtype,
                                               value.shape)  # fmt: skip
        maps[name][:] = value
    for start in range(0, count, size):
        feeds = {n: source.arrays[n][start : start + size] for n in inputs}
        values = run(sess, feeds)
        for name, value in zip(targets, values, strict=True):
            if name not in maps:
                shape = (count, *value.shape[1:])
                maps[name] = np.lib.format.open_memmap(folder / arrays[name], "w+", value.dtype,
                                                       shape)  # fmt: skip
            if value.shape[1:] != maps[name].shape[1:] or value.shape[0] != len(feeds[inputs[0]]):
                raise GraphpruneError(
                    f"the teacher's {name!r} has shape {list(value.shape)} on samples "
                    f"{start}.. of {source.name}: not one row per sample of a fixed shape"
                )
            maps[name][start : start + len(value)] = value
        bar.update(len(feeds[inputs[0]]))
    for value in maps.values():
        value.flush()
    del maps
    return {"name": source.name, "count": count, "arrays": arrays}


def _exposing(model: onnx.ModelProto, targets: list[str]) -> onnx.ModelProto:
    """A copy whose outputs are exactly `targets` (the graph's outputs first)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    kept = {o.name: o for o in exposed.graph.output}
    outputs = [kept.get(n) or onnx.helper.make_empty_tensor_value_info(n) for n in targets]
    del exposed.graph.output[:]
    exposed.graph.output.extend(outputs)
    return exposed


def _teacher_batch(teacher, data: TrainingData, batch: int, provider: str):
    """(size, relax, note): `batch` when the teacher runs it as a batch whose samples do
    not change each other's outputs, else its static batch or 1 (as calibration does)."""
    static = static_batch(teacher)
    first = next(sources(teacher, data, batch))
    feeds = {n: first.arrays[n][:batch] for n in _input_names(teacher)}
    size = next(iter(feeds.values())).shape[0]
    if size == (static or 1):
        return static or 1, False, None
    relax = static is not None
    sess = session(relax_batch(teacher) if relax else teacher, provider)
    batched, error = try_run(sess, feeds)
    if error is None:
        single = run(sess, {n: v[:1] for n, v in feeds.items()})
        agree = all(
            a.shape[1:] == b.shape[1:] and (deviation(b, a[:1])["max_rel"] or 0.0) <= 1e-3
            for a, b in zip(batched, single, strict=True)
        )  # fmt: skip
        if agree:
            return batch, relax, None
        error = "samples of one batch change each other's outputs"
    fixed = static or 1
    return fixed, False, f"the model does not run at batch {size} ({error}); trained at {fixed}"
