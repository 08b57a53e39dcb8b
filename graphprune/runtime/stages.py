"""A model run one layer at a time: split at its residual stream into stages (the nodes
before the first layer, then one stage per layer, the last one with what follows it), each
stage its own small model, with the tensors that cross between stages streamed to disk.

The layers are the residual units of `graphprune.core.blocks` (a transformer layer's
attention and MLP blocks together). Every other node joins the stage of its latest input
(the causal mask, rotary tables and shape vectors join the first stage: they read only the
graph inputs), so a stage only reads tensors of earlier stages. A stage's model holds its
own nodes and the weights they read (external weights stay references to their file), so
an onnxruntime session holds one layer's weights at a time, and the activations that cross
stages wait on disk, one file per tensor and batch, deleted once no later stage reads
them. Peak memory: one layer's session plus one batch of activations.

`StagedRun` runs any model that keeps the original's node names (the pruned model, the
masked original) with the split of the original: nodes it does not know (a compensation's
bias Add, a shape computation copied per consumer) join the stage of their latest input.
`compare_staged` is validation at any size: the pruned model against a reference, stage
by stage, the residual stream compared at every layer boundary where both keep its width.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from ..core.blocks import find_blocks, units
from ..core.graph import GraphView
from ..errors import GraphpruneError
from .sessions import run, session
from .validation import Validation, deviation


@dataclass(frozen=True)
class Split:
    """Which stage each node of the original model runs in (0: before the first layer,
    k: layer k, the last with what follows it), and the residual stream after each layer
    (the last one is read by the nodes after the last layer, in the same stage)."""

    stage_of: dict[str, int]
    boundaries: tuple[str, ...]

    @property
    def stages(self) -> int:
        return len(self.boundaries) + 1


def split_layers(view: GraphView) -> Split:
    """The layer split of a model (one stage per residual unit, in graph order)."""
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in view.order for attr in node.attribute):  # fmt: skip
        raise GraphpruneError("layer-by-layer runs do not split models with If/Loop/Scan bodies")
    found = units(view, find_blocks(view), "layer")
    if not found:
        raise GraphpruneError("no residual layers found: the model cannot be run layer by layer")
    unit_of: dict[str, int] = {}
    boundaries = []
    for index, unit in enumerate(found, start=1):
        for block in unit:
            for name in (*block.nodes, block.add):
                unit_of.setdefault(name, index)
        boundaries.append(view.nodes[unit[-1].add].output[0])
    stage_of: dict[str, int] = {}
    stage_of_tensor: dict[str, int] = {}
    for node in view.order:
        before = max((stage_of_tensor.get(name, 0) for name in node.input if name), default=0)
        stage = unit_of.get(node.name, before)
        if stage < before:
            raise GraphpruneError(
                f"cannot split the model into layers: '{node.name}' of layer {stage} reads a "
                f"tensor computed in layer {before}"
            )
        stage_of[node.name] = stage
        for name in node.output:
            stage_of_tensor[name] = stage
    return Split(stage_of, tuple(boundaries))


class Stream:
    """Tensors of every batch on disk in a private folder (removed by `close`)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="graphprune-stream-"))
        self.files: dict[str, int] = {}

    def _path(self, name: str, batch: int) -> Path:
        index = self.files.setdefault(name, len(self.files))
        return self.folder / f"{index}-{batch}.npy"

    def put(self, name: str, batch: int, value: np.ndarray) -> None:
        np.save(self._path(name, batch), np.ascontiguousarray(value), allow_pickle=False)

    def get(self, name: str, batch: int) -> np.ndarray:
        return np.load(self._path(name, batch), allow_pickle=False)

    def drop(self, name: str, batches: int) -> None:
        for batch in range(batches):
            self._path(name, batch).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class StagedRun:
    """Runs a model stage by stage over batches, streaming what crosses stages.

    `run_stage` runs one stage of `model` (any model with the original's node names:
    the caller may hand a repaired one for each stage, the sequential order); `expose`
    adds tensors to what `inspect(batch, values)` sees (the inputs of the layer's prunable
    consumers); `overrides` replaces weights of this run only (the masked layer);
    `advance=False` runs the stage without handing its outputs on (statistics only)."""

    model: onnx.ModelProto
    split: Split
    provider: str | None = None
    progress: bool = False
    stream: Stream = field(default_factory=Stream)
    batches: int = 0

    def feed(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        """Store the graph inputs of every batch (the first stage's inputs)."""
        for batch, values in enumerate(feeds):
            for name, value in values.items():
                self.stream.put(name, batch, value)
            self.batches = batch + 1
        if self.batches == 0:
            raise GraphpruneError("no batches to run")

    def run(self, inspect: Callable[[int, int, dict[str, np.ndarray]], None] | None = None):
        """Every stage of `model` in order; the graph outputs stay in the stream."""
        for stage in range(self.split.stages):
            each = None if inspect is None else (lambda b, v, s=stage: inspect(s, b, v))
            self.run_stage(stage, inspect=each)

    def outputs(self, batch: int) -> list[np.ndarray]:
        return [self.stream.get(o.name, batch) for o in self.model.graph.output]

    def close(self) -> None:
        self.stream.close()

    def run_stage(
        self,
        stage: int,
        model: onnx.ModelProto | None = None,
        *,
        expose: Iterable[str] = (),
        inspect: Callable[[int, dict[str, np.ndarray]], None] | None = None,
        overrides: dict[str, dict[int, np.ndarray]] | None = None,
        advance: bool = True,
    ) -> None:
        model = model or self.model
        stages = _stage_nodes(model, self.split)
        last_read = _last_reads(stages)
        outputs = {o.name for o in model.graph.output}
        nodes = stages[stage]
        produced = {name for node in nodes for name in node.output if name}
        initializers = {t.name for t in model.graph.initializer}
        reads = _ordered(name for node in nodes for name in node.input if name)
        inputs = [n for n in reads if n not in produced and n not in initializers]
        later = [n for n in _ordered(produced) if last_read.get(n, -1) > stage or n in outputs]
        exposed = [n for n in _ordered(expose) if n in produced or n in inputs]
        # Not handing on: only the exposed tensors are asked for (onnxruntime skips the
        # rest, e.g. the logits after the last layer).
        wanted = _ordered([*(later if advance else []), *(n for n in exposed if n in produced)])
        examples = {n: self.stream.get(n, 0) for n in inputs}
        sub = _stage_model(model, nodes, inputs, wanted, examples, overrides or {})
        sess = session(sub, self.provider)
        for batch in tqdm(range(self.batches), desc=f"layer {stage}", leave=False,
                          disable=not self.progress):  # fmt: skip
            feeds = {name: self.stream.get(name, batch) for name in inputs}
            values = dict(zip(wanted, run(sess, feeds), strict=True))
            values.update({n: feeds[n] for n in exposed if n in feeds})
            if advance:
                for name in later:
                    self.stream.put(name, batch, values[name])
            if inspect is not None:
                inspect(batch, values)
        del sess
        if advance:
            for name in inputs:
                if last_read.get(name, -1) <= stage and name not in outputs:
                    self.stream.drop(name, self.batches)


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _stage_nodes(model: onnx.ModelProto, split: Split) -> list[list[onnx.NodeProto]]:
    """The model's nodes per stage; nodes the split does not name join the stage of their
    latest input."""
    stages: list[list[onnx.NodeProto]] = [[] for _ in range(split.stages)]
    tensor_stage: dict[str, int] = {}
    for node in _topological(model):
        before = max((tensor_stage.get(n, 0) for n in node.input if n), default=0)
        stage = max(split.stage_of.get(node.name, before), before)
        stages[stage].append(node)
        for name in node.output:
            tensor_stage[name] = stage
    return stages


def _topological(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return GraphView(model, shapes=False).order


def _last_reads(stages: list[list[onnx.NodeProto]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for stage, nodes in enumerate(stages):
        for node in nodes:
            for name in node.input:
                if name:
                    last[name] = stage
    return last


def _stage_model(model, nodes, inputs, outputs, examples: dict[str, np.ndarray], overrides):
    """A model of `nodes` alone: `inputs` typed like the stored examples, the weights the
    nodes read (references stay references), outputs left for onnxruntime to type.
    `overrides[node][index]` is a value that input of that node reads instead (its own
    copy: a weight shared with other nodes stays as it is for them)."""
    nodes = list(nodes)
    added = []
    for position, node in enumerate(nodes):
        if node.name not in overrides:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for index, value in overrides[node.name].items():
            name = f"{node.input[index]}__{node.name}_{index}"
            added.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
            copy.input[index] = name
        nodes[position] = copy
    reads = {name for node in nodes for name in node.input}
    graph = onnx.helper.make_graph(
        nodes, f"stage_{model.graph.name}",
        [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(examples[name].dtype), None)
         for name in inputs],
        [onnx.helper.make_empty_tensor_value_info(name) for name in outputs],
        [t for t in model.graph.initializer if t.name in reads] + added,
    )  # fmt: skip
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    sub.ir_version = model.ir_version
    sub.functions.extend(model.functions)
    return sub


def compare_staged(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    split: Split,
    feeds: list[dict[str, np.ndarray]],
    *,
    provider: str | None = None,
    progress: bool = False,
) -> Validation:
    """Run both models layer by layer on the same batches and compare their outputs and
    the residual stream at every layer boundary (bounded memory at any model size)."""
    values: dict[str, list[dict[str, np.ndarray]]] = {}
    boundaries = set(split.boundaries)
    for label, model in (("reference", reference), ("pruned", pruned)):
        staged = StagedRun(model, split, provider=provider, progress=progress)
        seen: dict[str, dict[str, np.ndarray]] = {}
        try:
            staged.feed(feeds)

            def keep(stage: int, batch: int, out: dict[str, np.ndarray], seen=seen) -> None:
                for name, value in out.items():
                    if name in boundaries:
                        seen[f"{name}#{batch}"] = value

            staged.run(inspect=keep)
            names = [o.name for o in model.graph.output]
            for batch in range(staged.batches):
                for name, value in zip(names, staged.outputs(batch), strict=True):
                    seen[f"{name}#{batch}"] = value
        finally:
            staged.close()
        values[label] = [seen]
    ref, new = values["reference"][0], values["pruned"][0]
    outputs = []
    layers = []
    for key in sorted(ref, key=_natural):
        name = key.rsplit("#", 1)[0]
        if key not in new or ref[key].shape != new[key].shape:
            if name in boundaries:
                continue  # the residual stream lost width (hidden-size pruning)
            raise GraphpruneError(f"output '{name}' changed shape in the pruned model")
        found = deviation(ref[key], new[key])
        if found["max_abs"] is None:
            raise GraphpruneError(f"'{name}' of the pruned model has NaN or inf where the "
                                  "reference's has not (or the reverse)")  # fmt: skip
        (layers if name in boundaries else outputs).append((name, ref[key].shape, found))
    return {
        "execution_provider": provider or "CPUExecutionProvider",
        "outputs": _merge(outputs),
        "layers": _merge(layers),
        "mode": "layer by layer",
    }  # type: ignore[typeddict-unknown-key]


def _natural(key: str):
    name, batch = key.rsplit("#", 1)
    return name, int(batch)


def _merge(rows) -> list[dict]:
    """One entry per tensor, the worst deviation over batches."""
    merged: dict[str, dict] = {}
    for name, shape, found in rows:
        entry = merged.setdefault(name, {"name": name, "shape": list(shape), "max_abs": 0.0,
                                         "max_rel": 0.0})  # fmt: skip
        entry["max_abs"] = max(entry["max_abs"], found["max_abs"])
        entry["max_rel"] = max(entry["max_rel"], found["max_rel"])
    return list(merged.values())
