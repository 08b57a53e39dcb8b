"""The interface a model offers its caller, and the contract a pruned model keeps with it.

A caller feeds the *required* inputs (graph inputs without an initializer), may override
the *defaults* (graph inputs backed by an initializer: every weight of an IR < 4 model,
Caffe2's shape inputs) and reads the outputs. A pruned model keeps, against the model as
the user gave it:

- exactly the required inputs: names in order, types, element types, ranks and dims
  (symbolic dims stay the same symbol): a pipeline that feeds the original feeds it;
- the outputs: names in order, element types and ranks; their dims, except where the user
  let outputs lose channels (`--prune-outputs`: static dims may shrink or become unknown);
- the IR version and the opsets;
- defaults that agree with their initializer (element type and dims, after slicing), or
  none: a default that folding or the rewrite turned into something else leaves the input
  list together with its initializer. In IR < 4 every initializer is a graph input, so a
  new one (a folded value, a sliced copy) comes with one.

`interface_problem` says in one line how a model breaks that contract; `restore_interface`
is the rewrite's half of it: the graph inputs and outputs of the original, with the
defaults following their (sliced) initializers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

Dim = int | str | None  # a size, a symbol, or unknown

# Before IR 4, every initializer had to be listed as a graph input (the checker says so).
_INITIALIZERS_ARE_INPUTS_BEFORE = 4


@dataclass(frozen=True)
class Port:
    """One graph input or output as declared: its type's kind ("tensor_type", ...), the
    element type of a tensor (0 otherwise) and its dims (None: no shape declared)."""

    name: str
    kind: str | None
    elem_type: int
    dims: tuple[Dim, ...] | None

    def text(self) -> str:
        if self.kind != "tensor_type":
            return f"{self.kind or 'untyped'}"
        element = onnx.TensorProto.DataType.Name(self.elem_type) if self.elem_type else "?"
        if self.dims is None:
            return f"{element.lower()} (no shape)"
        return f"{element.lower()}[{','.join('?' if d is None else str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class Interface:
    """What a caller of the model sees (`interface_of`)."""

    required: tuple[Port, ...]
    defaults: tuple[Port, ...]
    outputs: tuple[Port, ...]
    ir_version: int
    opsets: tuple[tuple[str, int], ...]

    @property
    def required_names(self) -> list[str]:
        return [port.name for port in self.required]


def port_of(info: onnx.ValueInfoProto) -> Port:
    kind = info.type.WhichOneof("value")
    if kind != "tensor_type":
        return Port(info.name, kind, 0, None)
    tensor = info.type.tensor_type
    dims = None
    if tensor.HasField("shape"):
        dims = tuple(_dim(d) for d in tensor.shape.dim)
    return Port(info.name, kind, int(tensor.elem_type), dims)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def interface_of(model: onnx.ModelProto) -> Interface:
    """The model's interface, read from its declarations (no weight is read)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [port_of(info) for info in model.graph.input]
    return Interface(
        required=tuple(port for port in inputs if port.name not in initializers),
        defaults=tuple(port for port in inputs if port.name in initializers),
        outputs=tuple(port_of(info) for info in model.graph.output),
        ir_version=int(model.ir_version),
        opsets=_opsets(model),
    )


def _opsets(model: onnx.ModelProto) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((o.domain or "ai.onnx", int(o.version)) for o in model.opset_import))


def call_problem(before: Interface, after: Interface) -> str | None:
    """How `after` is called differently from `before` (required inputs, outputs,
    versions), or None: folding's postcondition (only defaults may go)."""
    return _required_problem(before, after) or _outputs_problem(before, after, False) or (
        _versions_problem(before, after))  # fmt: skip


def interface_problem(
    original: Interface, model: onnx.ModelProto, *, outputs_may_shrink: bool = False
) -> str | None:
    """One line on how `model` breaks the contract with `original` (see the module), or
    None when it keeps it."""
    pruned = interface_of(model)
    return (
        _required_problem(original, pruned)
        or _outputs_problem(original, pruned, outputs_may_shrink)
        or _versions_problem(original, pruned)
        or _defaults_problem(model)
    )


def _required_problem(original: Interface, pruned: Interface) -> str | None:
    before = {port.name: port for port in original.required}
    after = {port.name: port for port in pruned.required}
    for name in after.keys() - before.keys():
        return f"the pruned model requires input '{name}', which the original does not"
    for name in before.keys() - after.keys():
        return f"the pruned model does not take the original's input '{name}'"
    if original.required_names != pruned.required_names:
        return "the pruned model takes the original's inputs in another order"
    for port in original.required:
        if after[port.name] != port:
            return (
                f"input '{port.name}' is {after[port.name].text()} in the pruned model, "
                f"{port.text()} in the original"
            )
    return None


def _outputs_problem(original: Interface, pruned: Interface, may_shrink: bool) -> str | None:
    names = [port.name for port in original.outputs]
    found = [port.name for port in pruned.outputs]
    if names != found:
        missing = [name for name in names if name not in found]
        extra = [name for name in found if name not in names]
        if missing:
            return f"the pruned model has no output '{missing[0]}'"
        if extra:
            return f"the pruned model has an output '{extra[0]}' the original has not"
        return "the pruned model gives the original's outputs in another order"
    for before, after in zip(original.outputs, pruned.outputs, strict=True):
        if before == after or (may_shrink and _shrunk(before, after)):
            continue
        return (
            f"output '{before.name}' is {after.text()} in the pruned model, "
            f"{before.text()} in the original"
        )
    return None


def _shrunk(before: Port, after: Port) -> bool:
    """Only static dims changed (to another size or to unknown): the channels an output
    lost; the sizes themselves are validation's to compare."""
    if (before.kind, before.elem_type) != (after.kind, after.elem_type):
        return False
    if before.dims is None or after.dims is None:
        return before.dims == after.dims
    if len(before.dims) != len(after.dims):
        return False
    for old, new in zip(before.dims, after.dims, strict=True):
        if isinstance(old, int) and (new is None or isinstance(new, int)):
            continue
        if old != new:
            return False
    return True


def _versions_problem(original: Interface, pruned: Interface) -> str | None:
    if original.ir_version != pruned.ir_version:
        return f"the pruned model has IR version {pruned.ir_version}, not {original.ir_version}"
    if original.opsets != pruned.opsets:
        return f"the pruned model imports opsets {pruned.opsets}, not {original.opsets}"
    return None


def _defaults_problem(model: onnx.ModelProto) -> str | None:
    """A default whose declaration disagrees with its initializer (a sliced weight whose
    input entry kept the old dims), or an initializer an IR < 4 model does not list."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for info in model.graph.input:
        tensor = initializers.get(info.name)
        if tensor is None:
            continue
        port = port_of(info)
        declared = Port(info.name, "tensor_type", int(tensor.data_type), tuple(tensor.dims))
        if port.kind != "tensor_type" or port.elem_type != declared.elem_type or (
            port.dims is not None and port.dims != declared.dims
        ):  # fmt: skip
            return (
                f"input '{info.name}' is declared {port.text()} but its initializer is "
                f"{declared.text()}"
            )
    if model.ir_version < _INITIALIZERS_ARE_INPUTS_BEFORE:
        listed = {info.name for info in model.graph.input}
        for name in initializers.keys() - listed:
            return f"initializer '{name}' is not a graph input (IR {model.ir_version} needs it)"
    return None


def list_initializers_as_inputs(model: onnx.ModelProto) -> None:
    """In IR < 4 every initializer must be a graph input: add the missing entries (of the
    initializer's type and dims), in initializer order. Nothing to do from IR 4 on."""
    if model.ir_version >= _INITIALIZERS_ARE_INPUTS_BEFORE:
        return
    listed = {info.name for info in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in listed:
            model.graph.input.append(_declared(tensor))
            listed.add(tensor.name)


def _declared(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def restore_interface(
    model: onnx.ModelProto,
    original: onnx.ModelProto,
    *,
    output_shapes: dict[str, tuple[Dim, ...]] | None = None,
    cache: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Give `model`, a rewrite of `original`, the original's graph inputs and outputs as
    declared (graphsurgeon exports neither faithfully: it drops initializer-backed inputs,
    and an output whose value_info has no shape loses its shape). Defaults follow their
    initializer: its element type and (sliced) dims, or gone with it. `output_shapes`
    (inferred on `model`) update the outputs' static dims when outputs may lose channels;
    a static dim inference does not know becomes unknown, symbols stay. `cache` (name ->
    axis, kept heads) narrows the KV cache inputs and outputs (`resized`)."""
    original_defaults = {tensor.name for tensor in original.graph.initializer}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    inputs = []
    for info in original.graph.input:
        if info.name not in original_defaults:
            inputs.append(info)
        elif info.name in initializers:
            inputs.append(_declared(initializers[info.name]))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    list_initializers_as_inputs(model)
    del model.graph.output[:]
    for info in original.graph.output:
        output = model.graph.output.add()
        output.CopyFrom(info)
        if output_shapes is not None:
            _update_dims(output, output_shapes.get(info.name))
    for info in [*model.graph.input, *model.graph.output]:
        if cache and info.name in cache and info.type.WhichOneof("value") == "tensor_type":
            axis, count = cache[info.name]
            dim = info.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_value"):
                dim.dim_value = count


def resized(interface: Interface, cache: Mapping[str, tuple[int, int]]) -> Interface:
    """The interface a prune with --prune-kv-cache keeps: the original's, with each KV
    cache input's and output's static head dim (name -> axis, kept heads) narrowed. The
    cache is the one place the caller's contract changes, and only with the heads."""
    if not cache:
        return interface

    def port(p: Port) -> Port:
        if p.name not in cache or p.dims is None:
            return p
        axis, count = cache[p.name]
        dims = list(p.dims)
        dims[axis] = count if isinstance(dims[axis], int) else dims[axis]
        return dataclasses.replace(p, dims=tuple(dims))

    return dataclasses.replace(
        interface,
        required=tuple(map(port, interface.required)),
        outputs=tuple(map(port, interface.outputs)),
    )


def _update_dims(info: onnx.ValueInfoProto, shape: tuple[Dim, ...] | None) -> None:
    if info.type.WhichOneof("value") != "tensor_type":
        return
    dims = info.type.tensor_type.shape.dim
    if shape is not None and len(shape) != len(dims):
        shape = None
    for axis, dim in enumerate(dims):
        if not dim.HasField("dim_value"):
            continue  # symbols stay symbols
        size = None if shape is None else shape[axis]
        dim.Clear()
        if isinstance(size, int):
            dim.dim_value = size
