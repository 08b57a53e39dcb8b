"""The rewrite: apply the analysis' edits for a set of kept channels with onnx-graphsurgeon.

Every edit is a function of the kept atoms, so this module knows no op: it slices constant
inputs, sets counted integers (attributes, shape and split entries), then cleans up.
A constant shared with other uses gets its own copy, so no other node sees the change.
Large float weights are sliced only after the export, straight into the new model's
tensor (graphsurgeon holds a data-free placeholder until then), so the rewrite never holds
a second copy of the pruned weights next to the new model; a weight that was on disk
(`graphprune.io.external`) is read from its map and its slice written to disk, one at a
time, so the new model holds none of them.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import InternalError
from ..io.external import spill
from ..io.interface import restore_interface
from ..io.large import hollow
from ..io.protos import all_graphs, element_count
from ..io.shapes import infer_shapes
from .analysis import Analysis
from .channels import Bypass, Edit, MaskInput, SetCount, SliceConstant, SliceGroupedInput
from .dequantize import pack, unpack, zero_points
from .graph import SUBGRAPH_READ
from .unshare import split_shared_targets

PLAN_METADATA_KEY = "graphprune.plan"
# Float weights of this many elements or more are sliced after the export (see above).
DEFERRED_ELEMENTS = 2**18
_DEFERRABLE = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)  # fmt: skip


def rewrite(
    analysis: Analysis, keep_atom: np.ndarray, plan_json: dict | None = None, *,
    weights: bool = True,
):  # fmt: skip
    """A new ModelProto with the removed channels gone. `weights=False` leaves the sliced
    float weights without data (right dims and type, no bytes): enough to count
    parameters or infer shapes, at no weight memory; such a model cannot be run or saved."""
    edits = [e for e in analysis.edits if not isinstance(e, MaskInput)]
    return _edited(analysis, keep_atom, edits, apply_edit, plan_json, weights)


def masked(analysis: Analysis, keep_atom: np.ndarray) -> onnx.ModelProto:
    """The oracle: the original model with exactly what removal removes zeroed, i.e. every
    consumer's input weights for the removed channels. It must compute what the pruned
    model computes; a wrong slice anywhere in the rewrite breaks the equality."""
    absorbing = [
        e for e in analysis.edits if getattr(e, "absorbs", False) or isinstance(e, MaskInput)
    ]
    view = analysis.view

    def zero(edit: Edit, value: np.ndarray, keep_atom: np.ndarray) -> np.ndarray:
        return _zero(edit, value, keep_atom, _zero_value(view, edit, value))

    return _edited(analysis, keep_atom, absorbing, zero, None)


def _zero_value(view, edit: Edit, value: np.ndarray):
    """What a removed position becomes in the oracle: 0, or for a quantized weight its
    zero point (which dequantizes to 0)."""
    quant = getattr(edit, "quantized", None)
    if quant is None:
        return 0
    if quant.bits < 8:
        raise InternalError(f"packed weight of '{edit.node}' cannot absorb channels")
    node = view.nodes[edit.node]
    name = None if quant.zero_point is None else view.input(node, quant.zero_point)
    zero_point = None if name is None else view.constant(name)
    return zero_points(quant, value.shape, zero_point, value.dtype)


def _zero(edit: Edit, value: np.ndarray, keep_atom: np.ndarray, zero=0) -> np.ndarray:
    value = value.copy()
    if isinstance(edit, SliceGroupedInput):
        groups = edit.atoms.shape[0]
        rows = value.shape[0] // groups
        zero = np.broadcast_to(zero, value.shape)
        for group in range(groups):
            removed = ~keep_atom[edit.atoms[group]]
            rows_of_group = slice(group * rows, (group + 1) * rows)
            value[rows_of_group][:, removed] = zero[rows_of_group][:, removed]
        return value
    index = [slice(None)] * value.ndim
    index[edit.axis] = ~keep_atom[edit.atoms]
    index = tuple(index)
    value[index] = zero if np.isscalar(zero) else zero[index]
    return value


def _edited(analysis: Analysis, keep_atom, edits_to_apply, apply, plan_json, weights=True):
    view = analysis.view
    # Without weights, the unchanged ones are not copied into the new model either.
    graph = gs.import_onnx(view.model if weights else hollow(view.model))
    # Edits name body nodes (If branches, Loop and Scan bodies) like the main graph's.
    scopes = [graph, *graph.subgraphs(recursive=True)]
    home = {node.name: scope for scope in scopes for node in scope.nodes}
    nodes = {node.name: node for scope in scopes for node in scope.nodes}
    input_edits: dict[tuple[str, int], list[Edit]] = defaultdict(list)
    # Every count is compared (a consumer that keeps all its channels disagrees too).
    edits_to_apply, copies = split_shared_targets(edits_to_apply, keep_atom, nodes, home)
    for edit in edits_to_apply:
        if not _changes(edit, keep_atom):
            continue
        if isinstance(edit, MaskInput):
            _multiply_input(home[edit.node], nodes[edit.node], edit, keep_atom)
            continue
        if isinstance(edit, Bypass):
            _bypass(graph, nodes[edit.node], edit.input_index, view)
            continue
        if isinstance(edit, SetCount):
            if edit.target.attribute is not None:
                _set_attribute(nodes[edit.target.node], edit, keep_atom)
                continue
            input_edits[(edit.target.node, edit.target.input_index)].append(edit)
        else:
            input_edits[(edit.node, edit.input_index)].append(edit)
    uses = _constant_uses(view)
    for copy in copies:  # they read their originals' constants too
        for tensor in copy.inputs:
            storage = view.storage(tensor.name) if tensor.name else None
            if storage is not None:
                uses[storage] += 1
    deferred: dict[str, tuple[str, list[Edit], int | None]] = {}
    for (node_name, index), edits in sorted(input_edits.items()):
        node = nodes[node_name]
        source = _deferrable(view, node, index, edits, DEFERRED_ELEMENTS if weights else 0)
        if source is not None:
            placeholder = onnx.TensorProto(
                dims=_shape_after(view.initializers[source], edits, keep_atom, apply),
                data_type=view.initializers[source].data_type,
            )
            name = _replace_input(graph, node, index, LazyValues(placeholder), view, uses)
            # graphsurgeon writes an imported constant's data_location back (not a new one's)
            deferred[name] = (source, edits, node.inputs[index].data_location)
            continue
        value = _current_value(view, node, index, edits)
        for edit in sorted(edits, key=edit_order):
            value = apply(edit, value, keep_atom)
        _replace_input(graph, node, index, value, view, uses)
    # Stale shapes would contradict the new widths; outputs keep theirs unless they may
    # lose channels, then they are inferred again. Bodies' inputs and outputs (a Loop's
    # state, a branch's result) change width like any tensor.
    fixed = graph.inputs + ([] if analysis.prune_outputs else graph.outputs)
    for scope in scopes:
        for tensor in scope.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor not in fixed:
                tensor.shape = None
        for tensor in [] if scope is graph else scope.inputs + scope.outputs:
            # onnxruntime wants the rank of a body's inputs and outputs (a Loop's counter).
            if tensor not in fixed:
                tensor.shape = _rank_only(view.shape(tensor.name))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    _restore_initializer_scopes(model, view.model)
    if weights:
        _fill_deferred(model, view, deferred, keep_atom, apply)
    _restore_model_fields(model, view.model, plan_json)
    # The caller's view of the model is the original's (io.interface); outputs that may
    # lose channels take their new dims from inference.
    shapes = infer_shapes(model) if analysis.prune_outputs else None
    # Removal narrows the KV cache the caller feeds and reads (masking keeps it).
    cache = analysis.cache_sizes(keep_atom) if apply is apply_edit else None
    restore_interface(model, view.model, output_shapes=shapes, cache=cache)
    return model


def _rank_only(shape) -> list[None] | None:
    return None if shape is None else [None] * len(shape)


def _deferrable(view, node: gs.Node, index: int, edits: list[Edit], minimum: int) -> str | None:
    """The initializer a large float weight input reads, when only slices change it."""
    name = node.inputs[index].name if index < len(node.inputs) else ""
    storage = view.storage(name) if name else None
    tensor = view.initializers.get(storage) if storage is not None else None
    if (
        tensor is None
        or tensor.data_type not in _DEFERRABLE
        or element_count(tensor.dims) < minimum
        or any(isinstance(e, SetCount) for e in edits)
    ):
        return None
    return storage


def _shape_after(tensor: onnx.TensorProto, edits, keep_atom, apply) -> list[int]:
    """The shape `apply` gives the tensor, computed without its values."""
    shape = [int(d) for d in tensor.dims]
    if apply is not apply_edit:  # masking keeps every shape
        return shape
    for edit in sorted(edits, key=edit_order):
        keep = keep_atom[edit.atoms]
        if isinstance(edit, SliceGroupedInput):
            shape[1] = int(keep.sum(axis=1)[0])
        else:
            shape[edit.axis] = -(-int(keep.sum()) // getattr(edit, "pack", 1))
    return shape


def _fill_deferred(model: onnx.ModelProto, view, deferred, keep_atom, apply) -> None:
    """Slice each deferred weight into its placeholder in the exported model, one at a
    time: the tensor graphsurgeon would have written from the sliced array."""
    if not deferred:
        return
    tensors = {t.name: t for scope in all_graphs(model.graph) for t in scope.initializer}
    for name, (source, edits, location) in deferred.items():
        tensor = tensors.get(name)
        if tensor is None:  # removed by the cleanup
            continue
        value = np.array(view.constant(source))
        for edit in sorted(edits, key=edit_order):
            value = apply(edit, value, keep_atom)
        value = np.ascontiguousarray(value.astype(_dtype_of(view, source)))
        if list(value.shape) != list(tensor.dims):
            raise InternalError(f"weight '{name}' came out {value.shape}, not {tensor.dims}")
        if location == onnx.TensorProto.EXTERNAL:
            # A weight on disk stays there: the slice goes to a private file, and writers
            # copy it from there (as they would have written it from memory).
            spill(tensor, value)
        else:
            tensor.raw_data = value.tobytes()
            if location is not None:
                tensor.data_location = location
        del value


def _restore_initializer_scopes(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """graphsurgeon exports a constant that subgraphs read from an enclosing graph as an
    initializer of every subgraph that reads it, and of no enclosing graph when only
    subgraphs read it: each goes back to the main graph (where the input had it), once."""
    main = {t.name for t in original.graph.initializer}
    present = {t.name for t in model.graph.initializer}

    def visit(graph: onnx.GraphProto, outer: set[str]) -> None:
        for node in graph.node:
            for attribute in node.attribute:
                bodies = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
                for body in bodies:
                    moved = [i for i, t in enumerate(body.initializer) if t.name in outer | main]
                    for index in reversed(moved):
                        tensor = body.initializer[index]
                        if tensor.name in main and tensor.name not in present:
                            model.graph.initializer.add().CopyFrom(tensor)
                            present.add(tensor.name)
                        del body.initializer[index]
                    visit(body, outer | {t.name for t in body.initializer})

    visit(model.graph, present)


def _changes(edit: Edit, keep_atom: np.ndarray) -> bool:
    return not bool(keep_atom[edit.atoms].all())


def edit_order(edit: Edit) -> int:
    # Grouped input slicing reads the original row order, so it goes first.
    return 0 if isinstance(edit, SliceGroupedInput) else 1


def _current_value(view, node: gs.Node, index: int, edits: list[Edit]) -> np.ndarray:
    name = node.inputs[index].name if index < len(node.inputs) else ""
    value = view.constant(name) if name else None
    if value is not None:
        return np.array(value)
    fallback = next((e.target.fallback for e in edits if isinstance(e, SetCount)), None)
    if fallback is None:
        raise InternalError(f"cannot rewrite input {index} of '{node.name}': not a constant")
    return np.array(fallback, dtype=np.int64)


def apply_edit(edit: Edit, value: np.ndarray, keep_atom: np.ndarray) -> np.ndarray:
    if isinstance(edit, SliceConstant) and edit.pack > 1:
        bits = 8 // edit.pack
        values = unpack(value, bits, edit.axis)
        values = np.take(values, np.arange(edit.atoms.size), axis=edit.axis)
        return pack(np.compress(keep_atom[edit.atoms], values, axis=edit.axis), bits, edit.axis)
    if isinstance(edit, SliceConstant):
        return np.compress(keep_atom[edit.atoms], value, axis=edit.axis)
    if isinstance(edit, SliceGroupedInput):
        keep = keep_atom[edit.atoms]
        counts = keep.sum(axis=1)
        if len(set(counts.tolist())) != 1:
            raise InternalError(f"grouped conv '{edit.node}' would lose unequal channels")
        rows_per_group = value.shape[0] // edit.atoms.shape[0]
        parts = [
            np.compress(keep[g], value[g * rows_per_group : (g + 1) * rows_per_group], axis=1)
            for g in range(edit.atoms.shape[0])
        ]
        return np.concatenate(parts, axis=0)
    flat = value.reshape(-1).copy()
    flat[edit.target.entry] = int(keep_atom[edit.atoms].sum())
    return flat.reshape(value.shape)


def _multiply_input(graph: gs.Graph, node: gs.Node, edit: MaskInput, keep_atom) -> None:
    """Zero removed positions of a computed input with a Mul by a 0/1 mask, or set them to
    a non-zero `fill` (-inf) with an Add of 0/fill (oracle only)."""
    tensor = node.inputs[edit.input_index]
    shape = [1] * edit.rank
    shape[edit.axis] = edit.atoms.shape[0]
    keep = keep_atom[edit.atoms].reshape(shape)
    dtype = tensor.dtype or np.float32
    op = "Mul" if edit.fill == 0 else "Add"
    mask = keep.astype(dtype) if op == "Mul" else np.where(keep, 0, edit.fill).astype(dtype)
    name = f"{node.name}_mask{edit.input_index}"
    masked_tensor = gs.Variable(f"{name}_output", dtype=tensor.dtype)
    constant: gs.Tensor = gs.Constant(name, mask)
    if tensor.dtype is None and graph.opset >= 15:  # type unknown here (fp16?): as the input's
        like = [f"{name}_like"]
        constant = graph.layer(op="CastLike", inputs=[constant, tensor], outputs=like)[0]
    graph.nodes.append(gs.Node(op, name, inputs=[tensor, constant], outputs=[masked_tensor]))
    node.inputs[edit.input_index] = masked_tensor


def _bypass(graph: gs.Graph, node: gs.Node, index: int, view) -> None:
    """The node's output becomes its input `index`: its readers read that input instead
    (an Identity keeps the name of a model output or of a tensor a subgraph reads)."""
    source, output = node.inputs[index], node.outputs[0]
    named = output in graph.outputs or any(
        use == SUBGRAPH_READ for _, use in view.consumers(output.name)
    )
    if named:
        node.op, node.attrs = "Identity", {}
        node.inputs.clear()
        node.inputs.append(source)
        return
    for reader in list(output.outputs):
        for position, tensor in enumerate(reader.inputs):
            if tensor is output:
                reader.inputs[position] = source
    node.outputs.clear()


def _set_attribute(node: gs.Node, edit: SetCount, keep_atom: np.ndarray) -> None:
    count = int(keep_atom[edit.atoms].sum())
    name = edit.target.attribute
    if edit.target.entry is None:
        node.attrs[name] = count
        return
    values = list(node.attrs.get(name) or edit.target.fallback or [])
    values[edit.target.entry] = count
    node.attrs[name] = values
    node.attrs.pop("num_outputs", None)


def _constant_uses(view) -> dict[str, int]:
    """How many node inputs read each constant storage (directly or through Identity)."""
    counts: dict[str, int] = defaultdict(int)
    for node in view.nodes.values():
        for name in node.input:
            storage = view.storage(name) if name else None
            if storage is not None:
                counts[storage] += 1
    return counts


def _replace_input(graph: gs.Graph, node: gs.Node, index: int, value, view, uses) -> str:
    """Put `value` (an array, or a deferred weight's placeholder) in the node's input;
    returns the name of the constant that holds it."""
    old = node.inputs[index] if index < len(node.inputs) else None
    storage = view.storage(old.name) if old is not None else None
    dtype = _dtype_of(view, storage)
    if dtype is not None and not isinstance(value, LazyValues):
        value = value.astype(dtype)
    if (
        isinstance(old, gs.Constant)
        and storage == old.name
        and uses.get(storage, 0) == 1
        and old not in graph.outputs
    ):
        old.values = value
        if old.data_location == onnx.TensorProto.EXTERNAL and not isinstance(value, LazyValues):
            old.data_location = onnx.TensorProto.DEFAULT  # as loading it whole set it
        return old.name
    base = storage or f"{node.name}_input{index}"
    if not isinstance(value, LazyValues):
        value = np.asarray(value, order="C")
    constant = gs.Constant(f"{base}__{node.name}_{index}", value)
    if old is None:
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(constant)
        node.attrs.pop("num_outputs", None)
    else:
        node.inputs[index] = constant
    return constant.name


def _dtype_of(view, storage: str | None):
    """The stored element type, read without decoding the weight a second time."""
    data_type = None if storage is None else view.constant_type(storage)
    return None if data_type is None else onnx.helper.tensor_dtype_to_np_dtype(data_type)


def _restore_model_fields(model: onnx.ModelProto, original: onnx.ModelProto, plan_json) -> None:
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    model.producer_name = original.producer_name
    model.producer_version = original.producer_version
    model.domain = original.domain
    model.model_version = original.model_version
    model.doc_string = original.doc_string
    del model.metadata_props[:]
    for prop in original.metadata_props:
        if prop.key != PLAN_METADATA_KEY:
            model.metadata_props.add(key=prop.key, value=prop.value)
    if plan_json is not None:
        model.metadata_props.add(
            key=PLAN_METADATA_KEY,
            value=json.dumps(plan_json, sort_keys=True, separators=(",", ":")),
        )
    del model.graph.value_info[:]
