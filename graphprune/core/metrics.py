"""Model size and cost: parameters (float constants) and multiply-accumulates of the
ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul, and onnxruntime's fused
ops counted as the ops they fuse)."""

from __future__ import annotations

import math

import onnx

from ..io.protos import all_graphs, element_count, is_float, node_attribute
from ..io.shapes import infer_shapes

# Quantized weights are stored as 4- to 16-bit integers (int32 and int64 hold biases of
# quantized layers, but also indices and shapes, and are not counted).
_QUANTIZED_TYPES = frozenset(
    {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
     onnx.TensorProto.UINT4, onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
)  # fmt: skip


def is_parameter(data_type: int) -> bool:
    """Whether an element type holds parameters: floating point or quantized integers."""
    return is_float(data_type) or data_type in _QUANTIZED_TYPES


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point and quantized-integer initializers and Constant node
    values, subgraphs' included (If branches hold the weights of control-flow exports)."""
    total = 0
    for graph in all_graphs(model.graph):
        total += sum(element_count(t.dims) for t in graph.initializer if is_parameter(t.data_type))
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and is_parameter(attribute.t.data_type):
                        total += element_count(attribute.t.dims)
    return int(total)


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """MACs of one run with the given input shapes (unknown shapes count as zero)."""
    shapes = infer_shapes(model, input_shapes)
    return int(sum(node_macs(node, shapes) for node in model.graph.node))


# The weight's input index of the ops whose MACs are counted: float and quantized
# (QOperator, integer, dynamic and onnxruntime's contrib) convolutions and products.
WEIGHT_INPUT = {
    "Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "QLinearConv": 3, "ConvInteger": 1,
    "QLinearMatMul": 3, "MatMulInteger": 1, "QGemm": 3, "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1, "MatMulNBits": 1,
}  # fmt: skip
_CONVOLUTIONS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")


def node_macs(node: onnx.NodeProto, shapes: dict) -> int:
    """MACs of one node given inferred shapes (per-layer costs in `graphprune diff`)."""
    out = shapes.get(node.output[0]) if node.output else None
    if out is None or not all(isinstance(d, int) for d in out):
        return 0
    if node.op_type in _CONVOLUTIONS:
        index = WEIGHT_INPUT[node.op_type]
        weight = shapes.get(node.input[index]) if len(node.input) > index else None
        if weight is None:
            return 0
        kernel = math.prod(weight[2:])
        if node.op_type != "ConvTranspose":
            return int(math.prod(out) * weight[1] * kernel)
        x = shapes.get(node.input[0])
        if x and all(isinstance(d, int) for d in x):
            return int(math.prod(x) * weight[1] * kernel)
    elif node.op_type in WEIGHT_INPUT:
        a = shapes.get(node.input[0])
        if a and isinstance(a[-1], int):
            transposed = node_attribute(node, "transA", 0) if "Gemm" in node.op_type else 0
            k = a[0] if transposed else a[-1]
            return int(math.prod(out) * int(k))
    elif node.domain == "com.microsoft":
        return _fused_macs(node, shapes, out)
    return 0


def _fused_macs(node: onnx.NodeProto, shapes: dict, out: tuple[int, ...]) -> int:
    """FusedConv as Conv, FusedMatMul as MatMul; attention as Q.K^T and P.V over T keys
    (B * S * T * (Q + V) for query width Q and value width V, as the raw graph's two
    MatMuls count), plus Attention's input projection. Without a KV cache T is the key
    input's length (the query's for self-attention and packed inputs); a cache's length
    is unknown before the run and not counted. Packed (token-major) ops are not counted."""
    if node.op_type in ("FusedConv", "FusedMatMul"):
        plain = onnx.NodeProto()
        plain.CopyFrom(node)
        plain.domain, plain.op_type = "", node.op_type[len("Fused") :]
        if node.op_type == "FusedMatMul" and node_attribute(node, "transA", 0):
            a = shapes.get(node.input[0])
            return int(math.prod(out) * a[-2]) if a and isinstance(a[-2], int) else 0
        return node_macs(plain, shapes)
    query = shapes.get(node.input[0])
    if query is None or len(query) != 3 or not all(isinstance(d, int) for d in query):
        return 0
    batch, length = query[0], query[1]
    key = shapes.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    keys = key[1] if key and len(key) == 3 and isinstance(key[1], int) else length
    if node.op_type == "Attention":
        weights = shapes.get(node.input[1])
        if weights is None or len(weights) != 2:
            return 0
        sizes = node_attribute(node, "qkv_hidden_sizes", None) or [weights[1] // 3] * 3
        projection = batch * length * weights[0] * weights[1]
        return int(projection + batch * length * length * (sizes[0] + sizes[2]))
    if node.op_type == "MultiHeadAttention" and key and len(key) == 3:
        return int(batch * length * keys * (query[2] + out[-1]))
    if node.op_type == "GroupQueryAttention":
        return int(batch * length * keys * 2 * out[-1])
    return 0
