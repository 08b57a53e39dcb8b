"""ONNX -> torch by interpretation: `LoweredModel` walks the graph in order and runs each
node as a small torch function from the op registry (`registry`, `ops_*`), so autograd
trains any graph whose ops are covered, from any exporter, at any batch size or sequence
length it accepts (shapes are read at run time, never traced).

Initializers that are weights become `nn.Parameter`s: float ones as float32 master copies
(half precision computes in float32), integer ones behind a DequantizeLinear (QDQ) as
float masters whose codes round straight through (`ops_quant`). What a weight is comes from
where it is read (`registry.OpSpec`): statistics, scales and shapes stay constants, and so
do scalar constants outside weight slots (GELU's 0.5). `trainable` says which train:
"weights" all of them but lookup tables (token and position embeddings: a few thousand
samples update only the rows they use, and held-out text reads the others), "all" those
too, "norm-bias" only 1-D weights (biases, norm scales), the cheap recovery of PERP.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# The op modules register their functions in `registry.REGISTRY` when imported; by their
# own names, since `from . import` reads this package's face first.
import graphprune.recovery.ops_contrib as ops_contrib
import graphprune.recovery.ops_math as ops_math
import graphprune.recovery.ops_nn as ops_nn
import graphprune.recovery.ops_quant as ops_quant
import graphprune.recovery.ops_resize as ops_resize
import graphprune.recovery.ops_rnn as ops_rnn
import graphprune.recovery.ops_tensor as ops_tensor

from ..errors import GraphpruneError, first_line
from ..io.protos import all_graphs
from .dtypes import to_tensor
from .ops_quant import RANGES, along, ste_round
from .options import TRAINABLE
from .registry import Node, OpSpec, Unsupported, canonical_domain, lookup

_REGISTERED = (ops_contrib, ops_math, ops_nn, ops_quant, ops_resize, ops_rnn, ops_tensor)
_INT_WEIGHTS = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16}


def op_label(node: onnx.NodeProto) -> str:
    domain = canonical_domain(node.domain)
    return f"{domain}:{node.op_type}" if domain else node.op_type


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops of the model (subgraphs included) that the lowering has no function for."""
    return sorted({op_label(n) for g in all_graphs(model.graph) for n in g.node if not lookup(n)})


def check_supported(model: onnx.ModelProto) -> None:
    missing = unsupported_ops(model)
    if missing:
        raise Unsupported(
            f"cannot train op{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            "graphprune's lowering onto torch has no rule for "
            f"{'them' if len(missing) > 1 else 'it'}"
        )


@dataclass(frozen=True)
class QuantizedWeight:
    """Where an integer weight's codes come from: its DequantizeLinear's constants."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int
    dtype: np.dtype


@dataclass(frozen=True)
class Weight:
    """A trained initializer: its name, ONNX element type and quantization, if any."""

    name: str
    data_type: int
    quantized: QuantizedWeight | None = None


def stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every constant the model stores, by name: initializers and Constant nodes' values,
    in the main graph and in subgraphs (Paddle and some bodies keep weights in Constants)."""
    found = {}
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            found[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t"):
                        found[node.output[0]] = attribute.t
    return found


def find_weights(model: onnx.ModelProto, trainable: str = "weights") -> list[Weight]:
    """The stored constants that train, in a fixed order (see the module doc)."""
    if trainable not in TRAINABLE:
        raise GraphpruneError(f"unknown --train {trainable!r} (choose from {', '.join(TRAINABLE)})")
    uses: dict[str, list[tuple[onnx.NodeProto, int, OpSpec | None]]] = collections.defaultdict(list)
    for graph in all_graphs(model.graph):
        for node in graph.node:
            spec = lookup(node)
            for slot, name in enumerate(node.input):
                uses[name].append((node, slot, spec))
    outputs = {o.name for g in all_graphs(model.graph) for o in g.output}
    stored = stored_tensors(model)
    found = []
    for name, tensor in stored.items():
        reads = uses.get(name)
        if not reads or name in outputs or (trainable == "norm-bias" and len(tensor.dims) != 1):
            continue
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE):  # fmt: skip
            tables = all(spec is not None and slot in spec.tables for _, slot, spec in reads)
            if _float_weight(tensor, reads) and not (tables and trainable == "weights"):
                found.append(Weight(name, tensor.data_type))
        elif tensor.data_type in _INT_WEIGHTS:
            quantized = _quantized(tensor, reads, stored)
            if quantized is not None:
                found.append(Weight(name, tensor.data_type, quantized))
    return found


def _graphs_of(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return [attribute.g] if attribute.HasField("g") else list(attribute.graphs)


def _float_weight(tensor: onnx.TensorProto, reads) -> bool:
    scalar = int(np.prod(tensor.dims)) <= 1
    for _, slot, spec in reads:
        if spec is None or slot < 0 or slot in spec.frozen:
            return False
        if scalar and not spec.scalar_weights:
            return False
    return True


def _quantized(tensor, reads, initializers) -> QuantizedWeight | None:
    """The weight's quantization when every read is a DequantizeLinear's data input with
    the same constant scale and zero point; None (a constant) otherwise."""
    found = None
    for node, slot, _ in reads:
        if node.op_type != "DequantizeLinear" or slot != 0:
            return None
        names = [*node.input, "", ""]
        if names[1] not in initializers or (names[2] and names[2] not in initializers):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0):
            return None
        zp = numpy_helper.to_array(initializers[names[2]]) if names[2] else None
        this = QuantizedWeight(
            numpy_helper.to_array(initializers[names[1]]), zp, int(attrs.get("axis", 1)),
            onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type),
        )  # fmt: skip
        if found is not None and not _same(found, this):
            return None
        found = this
    return found


def _same(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    zeros = (a.zero_point is None and b.zero_point is None) or (
        a.zero_point is not None and b.zero_point is not None
        and np.array_equal(a.zero_point, b.zero_point))  # fmt: skip
    return a.axis == b.axis and np.array_equal(a.scale, b.scale) and zeros


class LoweredModel(torch.nn.Module):
    """The model as a torch module: `forward(feeds, outputs)` -> the named tensors."""

    def __init__(self, model: onnx.ModelProto, trainable: str = "weights") -> None:
        super().__init__()
        check_supported(model)
        self.graph = model.graph
        self.opsets = {canonical_domain(o.domain): o.version for o in model.opset_import}
        self.weights = find_weights(model, trainable)
        self.params = torch.nn.ParameterList()
        self._param_index: dict[str, int] = {}
        self._buffer_names: dict[str, str] = {}
        stored = stored_tensors(model)
        for weight in self.weights:
            self._param_index[weight.name] = len(self.params)
            array = numpy_helper.to_array(stored[weight.name])
            self.params.append(torch.nn.Parameter(_master(array, weight.quantized)))
        for tensor in model.graph.initializer:
            if tensor.name not in self._param_index:
                attribute = f"const{len(self._buffer_names)}"
                self.register_buffer(attribute, to_tensor(numpy_helper.to_array(tensor)),
                                     persistent=False)  # fmt: skip
                self._buffer_names[tensor.name] = attribute
        self._nodes: dict[int, list[tuple[onnx.NodeProto, Node, OpSpec]]] = {}
        self._last_use = self._last_uses()

    def _last_uses(self) -> dict[str, int]:
        last = {}
        for index, node in enumerate(self.graph.node):
            for name in node.input:
                last[name] = index
            for graph in (g for a in node.attribute for g in _graphs_of(a)):
                for inner in all_graphs(graph):
                    for sub in inner.node:
                        for name in sub.input:
                            last[name] = max(last.get(name, -1), index)
        return last

    @property
    def device(self) -> torch.device:
        return next(iter(self.params), torch.empty(0)).device

    def input_names(self) -> list[str]:
        stored = {t.name for t in self.graph.initializer}
        return [i.name for i in self.graph.input if i.name not in stored]

    def forward(
        self, feeds: dict[str, torch.Tensor], outputs: Sequence[str], record: dict | None = None
    ) -> list[torch.Tensor]:
        """The tensors named `outputs`; `record` collects every main-graph tensor's shape."""
        env: dict[str, torch.Tensor] = {n: getattr(self, a) for n, a in self._buffer_names.items()}
        for weight in self.weights:
            env[weight.name] = self._value(weight)
        env.update(feeds)
        wanted = set(outputs)
        self._run(self.graph, env, free=wanted, record=record)
        missing = [name for name in outputs if name not in env]
        if missing:
            raise GraphpruneError(f"the model computes no tensor {missing[0]!r}")
        return [env[name] for name in outputs]

    def _value(self, weight: Weight) -> torch.Tensor:
        param = self.params[self._param_index[weight.name]]
        q = weight.quantized
        if q is None:
            return param
        rank = param.dim()
        scale = along(_floats(q.scale, param.device), q.axis, rank)
        zero = along(None if q.zero_point is None else _floats(q.zero_point, param.device),
                     q.axis, rank)  # fmt: skip
        low, high = RANGES[torch.from_numpy(np.zeros(0, q.dtype)).dtype]
        return torch.clamp(ste_round(param / scale + zero), low, high)

    def _run(self, graph: onnx.GraphProto, env, free: set[str] | None = None,
             record: dict | None = None) -> None:  # fmt: skip
        device = self.device
        for index, (proto, node, spec) in enumerate(self._compiled(graph)):
            if proto.op_type == "Constant" and proto.output[0] in self._param_index:
                continue  # a weight kept in a Constant node: its parameter is in env
            inputs = []
            for name in proto.input:
                if not name:
                    inputs.append(None)
                    continue
                if name not in env:
                    raise GraphpruneError(
                        f"node {proto.name!r} reads {name!r}, which nothing computes"
                    )
                value = env[name]
                if isinstance(value, torch.Tensor) and value.device != device:
                    value = value.to(device)  # ops create shapes and indices on the CPU
                inputs.append(value)
            while inputs and inputs[-1] is None:
                inputs.pop()
            if proto.op_type in ("If", "Loop"):  # bodies read this scope's values
                node.run_graph = lambda body, values, env=env: self._run_body(body, env, values)
            try:
                out = spec.fn(node, *inputs)
            except (GraphpruneError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as error:  # a torch error is the model's (shapes, types)
                raise GraphpruneError(
                    f"the lowering failed at node {proto.name!r} ({proto.op_type}): "
                    f"{first_line(error)}"
                ) from None
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(proto.output, outs, strict=False):
                if name:
                    env[name] = value
                    if record is not None and isinstance(value, torch.Tensor):
                        record[name] = (tuple(value.shape), value.is_floating_point())
            if free is not None:  # drop what no later node reads (autograd keeps its own)
                for name in proto.input:
                    if name and self._last_use.get(name) == index and name not in free:
                        env.pop(name, None)

    def _run_body(self, body: onnx.GraphProto, outer, values: list) -> list[torch.Tensor]:
        env = collections.ChainMap({}, outer)
        for info, value in zip(body.input, values, strict=False):
            env[info.name] = value
        for tensor in body.initializer:
            if tensor.name not in self._param_index:  # a trained one is in the outer env
                env[tensor.name] = to_tensor(numpy_helper.to_array(tensor)).to(self.device)
        self._run(body, env)
        return [env[o.name] for o in body.output]

    def _compiled(self, graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, Node, OpSpec]]:
        key = id(graph)
        if key not in self._nodes:
            steps = []
            for proto in graph.node:
                spec = lookup(proto)
                if spec is None:
                    raise Unsupported(f"cannot train op {op_label(proto)}")
                opset = self.opsets.get(canonical_domain(proto.domain), self.opsets.get("", 1))
                steps.append((proto, Node(proto, opset), spec))
            self._nodes[key] = steps
        return self._nodes[key]

    def trained_arrays(self) -> dict[str, np.ndarray]:
        """Every weight in its model's own element type (codes for quantized ones)."""
        arrays = {}
        with torch.no_grad():
            for weight in self.weights:
                value = self._value(weight) if weight.quantized else self.params[
                    self._param_index[weight.name]]  # fmt: skip
                dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type)
                arrays[weight.name] = value.detach().cpu().numpy().astype(dtype)
        return arrays


def _floats(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(array.astype(np.float32), device=device)


def _master(array: np.ndarray, quantized: QuantizedWeight | None) -> torch.Tensor:
    """The float tensor that trains: the value itself, or the dequantized integer weight."""
    if quantized is None:
        return to_tensor(array)
    rank = array.ndim
    scale = along(torch.from_numpy(quantized.scale.astype(np.float32)), quantized.axis, rank)
    zero = along(None if quantized.zero_point is None else torch.from_numpy(
        quantized.zero_point.astype(np.float32)), quantized.axis, rank)  # fmt: skip
    return (torch.from_numpy(array.astype(np.float32)) - zero) * scale


def feeds_to_torch(feeds: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: to_tensor(value).to(device) for name, value in feeds.items()}

