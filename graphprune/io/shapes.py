"""Shape inference on a weight-free *skeleton* of the model: large initializers become
graph inputs carrying only their type and shape, so models over the 2 GB protobuf limit
infer just as small ones do, and symbolic dimensions stay symbolic. onnxruntime's symbolic
inference fills in what onnx's leaves unknown (products of symbolic dims).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
from pathlib import Path

import onnx
from onnx import shape_inference

from ..errors import GraphpruneError
from .protos import all_graphs, element_count

# Initializers up to this many elements stay real values in the skeleton, so that shape
# computations that read them (Reshape targets, Slice bounds) still infer.
_SMALL_INITIALIZER = 4096

Shape = tuple[int | str | None, ...]


def infer_shapes(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    symbolic: bool = True,
) -> dict[str, Shape]:
    """Shapes of every tensor onnx shape inference can reach, symbolic dims as strings.

    `input_shapes` fixes the graph inputs' dims (to count MACs of a concrete run);
    `symbolic` adds onnxruntime's symbolic inference, slower but exact on symbolic dims."""
    skeleton = _skeleton(model)
    for info in skeleton.graph.input:
        # Paddle declares unknown dims as -1: a symbol, not a size (inference would carry
        # -1 on as a static dim, and folding would write it into reshape targets).
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = f"{info.name}_dim{axis}"
        if input_shapes and info.name in input_shapes:
            dims = info.type.tensor_type.shape.dim
            if len(dims) != len(input_shapes[info.name]):
                raise GraphpruneError(
                    f"input '{info.name}' has {len(dims)} dims, not {len(input_shapes[info.name])}"
                )
            for dim, size in zip(dims, input_shapes[info.name], strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = _infer(skeleton)
    # Some ops have no shape inference in onnx (function ops such as GroupNormalization):
    # their output has the data input's shape; state it and infer again downstream (each
    # pass reaches one more such op on a path: a QOperator ResNet chains one per block).
    for _ in range(_STATING_PASSES):
        known = {
            info.name
            for info in [*inferred.graph.value_info, *inferred.graph.input]
            if _shape_of(info.type) is not None  # a type without a shape is not known
        }
        stated = [
            _copy_type(inferred, node.input[0], node.output[0])
            for node in inferred.graph.node
            if node.op_type in _SHAPE_PRESERVING
            and node.output[0] not in known
            and node.input[0] in known
        ]
        stated += _quantized_contrib_types(inferred, known)
        if not stated:
            break
        skeleton.graph.value_info.extend(stated)
        inferred = _infer(skeleton)
    shapes = _shapes_in(inferred)
    # onnxruntime's symbolic inference keeps products of symbolic dims exact (a Reshape to
    # [B, S, -1, 64] gets its head count), which onnx's leaves unknown: it wins where it ran.
    if symbolic and _has_unknown_dims(skeleton, shapes):
        for name, shape in _symbolic_shapes(skeleton).items():
            if _better(shape, shapes.get(name)):
                shapes[name] = shape
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


def _shapes_in(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes inference wrote, subgraphs' (If branches, Loop and Scan bodies) included."""
    shapes: dict[str, Shape] = {}
    for graph in all_graphs(model.graph):
        for info in [*graph.input, *graph.value_info, *graph.output]:
            shape = _shape_of(info.type)
            if shape is not None and (None not in shape or info.name not in shapes):
                shapes[info.name] = shape
    return shapes


def _better(candidate: Shape, current: Shape | None) -> bool:
    """Whether the symbolic result knows more than onnx's: more static dims, or as many
    with related symbols where onnx invented unrelated ones."""
    if current is None or len(current) != len(candidate):
        return True

    def static(shape: Shape) -> int:
        return sum(isinstance(d, int) for d in shape)

    if static(candidate) != static(current):
        return static(candidate) > static(current)
    return any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in current)


def _has_unknown_dims(model: onnx.ModelProto, shapes: dict[str, Shape]) -> bool:
    """Whether onnx left shapes out (ops it does not know, such as onnxruntime's contrib
    ops) or dims it could not relate (None, or symbols it invented)."""
    if any(name and name not in shapes for node in model.graph.node for name in node.output):
        return True
    return any(
        d is None or (isinstance(d, str) and d.startswith("unk__"))
        for shape in shapes.values()
        for d in shape
    )


def _symbolic_shapes(skeleton: onnx.ModelProto) -> dict[str, Shape]:
    """onnxruntime's symbolic shape inference, run as its `infer_shapes` runs it except that
    an incomplete result is dropped here instead of being saved into the current directory
    (`sym_shape_infer_temp.onnx` and its data: stray files in the user's folder)."""
    try:
        module = _symbolic_shape_infer()
        SymbolicShapeInference, get_opset = module.SymbolicShapeInference, module.get_opset
        opset = get_opset(skeleton)
        if not opset or opset < 7:
            return {}
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
            inference._preprocess(skeleton)
            complete = False
            for _ in range(_SYMBOLIC_PASSES):  # it can loop forever on malformed models
                if not inference.run_:
                    break
                complete = inference._infer_impl()
            else:
                return {}
            inference._update_output_from_vi()
    except Exception:  # unsupported ops, missing sympy, a changed onnxruntime: onnx's stands
        return {}
    if not complete:
        return {}
    inferred = inference.out_mp_
    return {name: shape for name, shape in _shapes_in(inferred).items() if None not in shape}


@functools.cache
def _symbolic_shape_infer():
    """onnxruntime's symbolic_shape_infer module, loaded from its file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime.tools/__init__`, which
    imports torch when it is installed (seconds, for nothing used here)."""
    package = importlib.util.find_spec("onnxruntime")
    if package is None or not package.submodule_search_locations:
        raise ImportError("onnxruntime is not installed")
    path = Path(package.submodule_search_locations[0]) / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("_graphprune_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# onnxruntime's symbolic inference repeats a pass while it guesses new dims; real models
# settle in a few.
_SYMBOLIC_PASSES = 16

_STATING_PASSES = 256
_SHAPE_PRESERVING = {"GroupNormalization", "LayerNormalization", "RMSNormalization"}


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises several unrelated types here
        raise GraphpruneError(f"shape inference failed: {str(error).splitlines()[0]}") from None


def _copy_type(model: onnx.ModelProto, source: str, name: str) -> onnx.ValueInfoProto:
    for info in [*model.graph.value_info, *model.graph.input]:
        if info.name == source:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(info)
            copy.name = name
            return copy
    for tensor in model.graph.initializer:
        if tensor.name == source:
            return onnx.helper.make_tensor_value_info(name, tensor.data_type, tensor.dims)
    raise KeyError(source)


def _quantized_contrib_types(model: onnx.ModelProto, known: set[str]) -> list:
    """onnxruntime's QOperator contrib ops that onnx does not know: QLinearSigmoid and
    QLinearLeakyRelu keep X's shape, QLinearAdd and QLinearMul broadcast their operands
    (A and B, either may be a constant), QLinearConcat adds up sizes along its axis,
    QLinearAveragePool pools, QLinearGlobalAveragePool sets spatial dims to 1, QGemm is
    [M, N].
    Each stated type is added to `model` at once, so a chain of them takes one pass."""
    known = known | {tensor.name for tensor in model.graph.initializer}
    stated = []
    for node in model.graph.node:
        if node.domain != "com.microsoft" or node.output[0] in known or node.input[0] not in known:
            continue
        info = _contrib_type(model, node, known)
        if info is not None:
            model.graph.value_info.append(info)
            known.add(info.name)
            stated.append(info)
    return stated


def _contrib_type(model: onnx.ModelProto, node: onnx.NodeProto, known: set[str]):
    op = node.op_type
    if op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        return _copy_type(model, node.input[0], node.output[0])
    if op in ("QLinearAdd", "QLinearMul") and node.input[3] in known:
        first = _copy_type(model, node.input[0], node.output[0])
        second = _copy_type(model, node.input[3], node.output[0])
        a, b = _shape_of(first.type), _shape_of(second.type)
        if a is None or b is None:
            return None
        if len(b) > len(a):
            first, a, b = second, b, a
        b = (1,) * (len(a) - len(b)) + tuple(b)  # numpy broadcasting aligns the right
        for dim, x, y in zip(first.type.tensor_type.shape.dim, a, b, strict=True):
            if x == y or y == 1:
                continue
            if isinstance(x, int) and isinstance(y, int) and x != 1:
                return None  # sizes that do not broadcast: a malformed model
            dim.Clear()  # x is 1: y; unrelated symbols: unknown
            if x == 1 and isinstance(y, int):
                dim.dim_value = y
            elif x == 1 and y is not None:
                dim.dim_param = y
        return first
    if op == "QLinearConcat":  # X at inputs 2, 5, ...: sizes add up along `axis`
        parts = [_copy_type(model, x, node.output[0]) for x in node.input[2::3] if x in known]
        shapes = [_shape_of(part.type) for part in parts]
        if len(parts) != len(node.input[2::3]) or any(x is None for x in shapes):
            return None
        axis = next(a.i for a in node.attribute if a.name == "axis") % len(shapes[0])
        sizes = [shape[axis] for shape in shapes]
        dim = parts[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        if all(isinstance(size, int) for size in sizes):
            dim.dim_value = sum(sizes)
        return parts[0]
    if op == "QLinearAveragePool":
        return _pooled_type(model, node)
    if op == "QGemm" and node.input[3] in known:  # A' [M, K] times B' [K, N]
        attributes = {a.name: a.i for a in node.attribute if a.type == a.INT}
        a = _copy_type(model, node.input[0], node.output[0])
        b = _shape_of(_copy_type(model, node.input[3], node.output[0]).type)
        dims = a.type.tensor_type.shape.dim
        if len(dims) != 2 or b is None or len(b) != 2:
            return None
        if attributes.get("transA", 0):
            dims[0].CopyFrom(dims[1])
        dims[1].Clear()
        n = b[0] if attributes.get("transB", 0) else b[1]
        if isinstance(n, int):
            dims[1].dim_value = n
        return a
    if op == "QLinearGlobalAveragePool":
        info = _copy_type(model, node.input[0], node.output[0])
        dims = info.type.tensor_type.shape.dim
        last = any(a.name == "channels_last" and a.i for a in node.attribute)
        for dim in dims[1:-1] if last else dims[2:]:
            dim.Clear()
            dim.dim_value = 1
        return info
    return None


def _pooled_type(model: onnx.ModelProto, node: onnx.NodeProto):
    """AveragePool's output size per spatial axis: floor or ceil (ceil_mode) of
    (size + pads - kernel) / stride + 1, or ceil(size / stride) with SAME padding."""
    info = _copy_type(model, node.input[0], node.output[0])
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attributes["kernel_shape"])
    dims = info.type.tensor_type.shape.dim
    spatial = list(dims[1:-1] if attributes.get("channels_last", 0) else dims[2:])
    strides = list(attributes.get("strides", [1] * len(kernel)))
    pads = list(attributes.get("pads", [0] * 2 * len(kernel)))
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if len(spatial) != len(kernel) or auto_pad == "VALID":
        return None
    rounding = math.ceil if attributes.get("ceil_mode", 0) else math.floor
    for i, dim in enumerate(spatial):
        if not dim.HasField("dim_value"):
            return None
        size = dim.dim_value
        if auto_pad.startswith("SAME"):
            dim.dim_value = -(-size // strides[i])
        else:
            padded = size + pads[i] + pads[i + len(kernel)] - kernel[i]
            dim.dim_value = int(rounding(padded / strides[i])) + 1
    return info


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(inferable for node in model.graph.node for inferable in _as_inferable(node))
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    existing_inputs = {info.name for info in model.graph.input}
    for tensor in model.graph.initializer:
        if element_count(tensor.dims) <= _SMALL_INITIALIZER and not _is_external(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in existing_inputs:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


def _as_inferable(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """onnxruntime's FusedConv and FusedMatMul are unknown to onnx's inference and to
    onnxruntime's symbolic one (which then gives up on the whole graph). In the skeleton
    they are ops with their output shapes: FusedConv is Conv (its activation and residual
    input change no shape); FusedMatMul is MatMul of A and B with their last two axes
    swapped by transA/transB (a one-operand Einsum, whatever the rank; transBatchA/B stay
    unknown). The swapped operands' names are the output's plus a suffix no graph uses."""
    if node.domain != "com.microsoft" or node.op_type not in ("FusedConv", "FusedMatMul"):
        return [node]
    flags = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "FusedMatMul":
        if flags.get("transBatchA") or flags.get("transBatchB"):
            return [node]
        nodes, operands = [], list(node.input[:2])
        for index, flag in enumerate(("transA", "transB")):
            if flags.get(flag):
                swapped = f"{node.output[0]}::graphprune_{flag}"
                nodes.append(
                    onnx.helper.make_node(
                        "Einsum", [operands[index]], [swapped], equation="...ij->...ji"
                    )
                )
                operands[index] = swapped
        return [*nodes, onnx.helper.make_node("MatMul", operands, node.output[:1], node.name)]
    conv = onnx.NodeProto()
    conv.CopyFrom(node)
    conv.domain, conv.op_type = "", "Conv"
    del conv.input[3:]
    kept = [a for a in node.attribute if not a.name.startswith("activation")]
    del conv.attribute[:]
    conv.attribute.extend(kept)
    return [conv]


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _shape_of(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in type_proto.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
