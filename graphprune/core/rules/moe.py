"""Mixture-of-experts blocks: a router's TopK over its logits, the expert indices it
returns, the [E, ...] expert tables they index, and onnxruntime's fused com.microsoft.MoE.

An expert is one position of the router's logits axis (a row of the router's weight, a
channel like any other) together with row e of every table the indices select from.
Removing experts leaves the router choosing among the others, which is exactly the
original model with those logits at -inf: the TopK never picks them and a softmax gives
them nothing. That is the oracle (`mask_input(..., fill=-inf)`), not zeroing. The TopK
keeps working only while at least k experts stay (`keep_at_least`).

The indices (`Layout.index`) may only be reshaped or cast to another integer type (values
and their order unchanged) and used to gather rows of constant tables along the expert
axis, which then lose the removed experts' rows; any other use is a barrier.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..channels import Layout
from .context import Context
from .registry import index_rule, rule

_INTEGER_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
    onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
}  # fmt: skip


@rule("TopK")
def topk(ctx: Context) -> None:
    """TopK(X, K) returns the k largest (`largest`=1, else smallest) values along `axis`
    (default -1) and their indices. Along another axis than the channels' both outputs keep
    the channel layout. Along the channel axis the channels are experts: Values are those
    of the picked experts (the same once removed experts can never be picked, which the
    oracle makes so with -inf, +inf for the smallest), Indices name them."""
    x = ctx.data_layout()
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    axis = int(ctx.attr("axis", -1)) % rank
    if x.axis != axis:
        ctx.emit(0, x)
        ctx.emit(1, x)
        return
    if len(ctx.node.output) < 2 or not ctx.view.consumers(ctx.node.output[1]):
        ctx.block("top-k over channels whose indices pick nothing is not a router")
        return
    k = ctx.constant(1) if ctx.view.opset >= 10 else np.asarray(ctx.attr("k"))
    if k is None or k.size != 1:
        ctx.block("k computed at runtime")
        return
    fill = -np.inf if ctx.attr("largest", 1) else np.inf
    ctx.mask_input(0, axis, x.atoms, fill=fill)
    ctx.keep_at_least(x.atoms, int(k.reshape(-1)[0]))
    ctx.mark_experts(x.atoms)
    ctx.emit(1, Layout(-1, x.atoms, index=True))


def router_softmax(ctx: Context, x: Layout) -> bool:
    """A softmax along the channel axis that only a TopK along the same axis reads (through
    Casts) is a router's: removing experts renormalizes over the others, exactly as -inf
    logits would. Returns whether it mapped the node (any other softmax over channels is a
    barrier: there removal would change the values of the channels that stay)."""
    rank = len(ctx.input_shape(0) or ())
    pending, seen = list(ctx.node.output[:1]), set()
    while pending:
        tensor = pending.pop()
        seen.add(tensor)
        for node, index in ctx.view.consumers(tensor):
            if node.op_type == "Cast" and not node.domain:
                pending.append(node.output[0])
                continue
            along = int(ctx.view.attribute(node, "axis", -1)) % rank if rank else None
            if node.op_type != "TopK" or node.domain or index != 0 or along != x.axis:
                return False
    if seen & set(ctx.view.graph_outputs):
        return False
    ctx.mask_input(0, x.axis, x.atoms, fill=-np.inf)
    ctx.emit(0, x)
    return True


@index_rule("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")
def same_indices(ctx: Context) -> None:
    """Reshapes keep the values and their row-major order (so the rows later gathered
    still line up with the TopK's values); a cast to another integer type keeps them."""
    if any(index != 0 for index, _ in ctx.tracked()):
        ctx.block("expert indices reach a shape or axes input")
        return
    if ctx.node.op_type == "Cast" and ctx.attr("to") not in _INTEGER_TYPES:
        ctx.block("expert indices cast to a non-integer type")
        return
    ctx.emit(0, ctx.layout(0))


@index_rule("Gather")
def gather_expert_rows(ctx: Context) -> None:
    """Gather(data, indices, axis): with constant data whose `axis` has one entry per
    expert, each index picks its expert's slice; the table loses the removed experts'
    slices along `axis` and the output carries no channels."""
    indices = ctx.layout(1)
    table = ctx.constant_shape(0)
    if indices is None or table is None:
        ctx.block("gathers from a computed tensor by expert indices")
        return
    axis = int(ctx.attr("axis", 0)) % len(table)
    if table[axis] != indices.size:
        ctx.block("the table does not have one entry per expert along the gathered axis")
        return
    ctx.slice(0, axis, indices.atoms, role="weight")


@index_rule("GatherND")
def gather_nd_expert_rows(ctx: Context) -> None:
    """GatherND(data, indices) with batch_dims 0 and indices [..., 1] picks slices of
    data's axis 0: a constant table with one row per expert loses the removed rows."""
    indices = ctx.layout(1)
    table = ctx.constant_shape(0)
    shape = ctx.input_shape(1) or ()
    if indices is None or table is None or ctx.attr("batch_dims", 0) != 0 or shape[-1:] != (1,):
        ctx.block("gathers other than one row per expert index from a constant table")
        return
    if table[0] != indices.size:
        ctx.block("the table does not have one row per expert")
        return
    ctx.slice(0, 0, indices.atoms, role="weight")


def gathered_expert_weights(ctx: Context) -> bool:
    """MatMul(A, B) where A gathers, per row, a matrix of a constant [E, N, K] table
    (Gather on axis 0 by [S] indices, or GatherND by [S, 1]) and B is [S, K, M]:
    transformers' batched experts, each row multiplying by its own expert's weights.
    Column k of every expert's matrix meets B's row k, row n makes output row n, whichever
    experts the indices pick: B's channels on K are absorbed by the table's axis 2 and the
    N output rows are new channels (the table's axis 1), the expert MLP width. Returns
    whether it mapped the node (False: not this form, `activation_matmul` decides)."""
    view = ctx.view
    producer = view.producer(ctx.node.input[0])
    if producer is None or producer.domain or producer.op_type not in ("Gather", "GatherND"):
        return False
    table = view.constant_shape(producer.input[0])
    shapes = [ctx.input_shape(0), ctx.input_shape(1), view.shape(producer.input[1])]
    if table is None or len(table) != 3 or None in shapes or ctx.layout(0) is not None:
        return False
    a_shape, b_shape, index_shape = shapes
    if producer.op_type == "Gather":
        one_row_each = len(index_shape) == 1 and int(view.attribute(producer, "axis", 0)) == 0
    else:
        batch_dims = int(view.attribute(producer, "batch_dims", 0))
        one_row_each = len(index_shape) == 2 and index_shape[1] == 1 and batch_dims == 0
    single_use = len(view.consumers(ctx.node.input[0])) == 1
    if not one_row_each or not single_use or len(a_shape) != 3 or len(b_shape) != 3:
        return False
    b = ctx.layout(1)
    if b is not None and b.axis != 1:
        ctx.block("channels on the batch or column axis of per-row expert weights' operand")
        return True
    if b is not None:
        ctx.slice_upstream(0, 0, 2, b.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(table[1])
    ctx.slice_upstream(0, 0, 1, out, role="weight")
    ctx.emit(0, Layout(1, out))
    return True


# com.microsoft.MoE inputs (onnxruntime's ContribOperators.md): input, router_probs [T, E],
# fc1 [E, fusion * inter, H], fc1 bias [E, fusion * inter], fc2 [E, H, inter], fc2 bias
# [E, H], fc3 [E, inter, H], fc3 bias [E, inter].
_FC1, _FC1_BIAS, _FC2, _FC2_BIAS, _FC3, _FC3_BIAS = range(2, 8)


@rule("MoE", domain="com.microsoft")
def fused_moe(ctx: Context) -> None:
    """Each token goes to the top `k` experts of router_probs; expert e computes
    fc2[e] act(fc1[e] x (+ fc3[e] x for a separate SwiGLU gate)) with its biases. Experts
    are router_probs' last axis and axis 0 of every expert tensor. The expert MLP width
    `inter` is shared by all experts (one tensor holds them): unit j is row j of fc1
    (rows 2j, 2j+1 with interleaved SwiGLU, `swiglu_fusion`=1; j and inter + j
    concatenated, =2), row j of fc3 and column j of fc2, removed from every expert."""
    _stop_hidden(ctx)
    present = [i for i in range(_FC1, _FC3_BIAS + 1) if ctx.view.input(ctx.node, i)]
    shapes = {i: ctx.constant_shape(i) for i in present}
    fc1, fc2 = shapes.get(_FC1), shapes.get(_FC2)
    if any(shape is None for shape in shapes.values()) or fc1 is None or fc2 is None:
        ctx.block("expert weights computed at runtime")
        return
    if ctx.attr("use_sparse_mixer", 0):
        ctx.block("sparse-mixer routing is not mapped")
        return
    experts, inter = fc1[0], fc2[2]
    activation = ctx.attr("activation_type", "relu")
    activation = activation.decode() if isinstance(activation, bytes) else activation
    fusion = int(ctx.attr("swiglu_fusion", 0)) if activation == "swiglu" else 0
    if fc1[1] != (2 if fusion else 1) * inter or any(s[0] != experts for s in shapes.values()):
        ctx.block("expert weight shapes do not match the spec")
        return
    biases = {_FC1_BIAS, _FC2_BIAS, _FC3_BIAS}
    if not _route(ctx, experts, {i: "bias" if i in biases else "weight" for i in present}):
        return
    width = ctx.new_atoms(inter)
    rows = {0: width, 1: np.repeat(width, 2), 2: np.concatenate([width, width])}[fusion]
    ctx.slice(_FC1, 1, rows, role="weight")
    ctx.slice(_FC2, 2, width, role="weight", absorbs=True)
    if _FC1_BIAS in present:
        ctx.slice(_FC1_BIAS, 1, rows, role="bias")
    if _FC3 in present:
        ctx.slice(_FC3, 1, width, role="weight")
    if _FC3_BIAS in present:
        ctx.slice(_FC3_BIAS, 1, width, role="bias")


def _stop_hidden(ctx: Context) -> None:
    """Channels reaching a fused MoE anywhere but router_probs (the hidden size of its input,
    or computed expert weights) stop here. The experts do not depend on them: a MatMul's
    columns feeding the MoE directly leave its experts and expert width prunable."""
    for index, layout in ctx.tracked():
        if index != 1:
            ctx.stop(layout.atoms, "channels reach the input or the expert weights "
                     "(hidden size not mapped)")  # fmt: skip


def _route(ctx: Context, experts: int, per_expert: dict[int, str]) -> bool:
    """A fused MoE's experts: router_probs' (input 1) last axis and axis 0 of the inputs
    `per_expert` (index -> role). Returns False when that is not so (a barrier)."""
    router = ctx.layout(1)
    if router is None:
        return True
    if router.axis != len(ctx.input_shape(1) or ()) - 1 or router.size != experts:
        ctx.block("router_probs' expert axis is not its last one")
        return False
    for index, role in sorted(per_expert.items()):
        ctx.slice(index, 0, router.atoms, role=role)
    ctx.mask_input(1, router.axis, router.atoms, fill=-np.inf)
    ctx.keep_at_least(router.atoms, int(ctx.attr("k", 1)))
    ctx.mark_experts(router.atoms)
    return True


_QMOE_ROUTER_WEIGHTS = 14


@rule("QMoE", domain="com.microsoft")
def quantized_moe(ctx: Context) -> None:
    """com.microsoft.QMoE: MoE with quantized expert weights (packed bits, per-block
    scales, zero points). Its experts go as in MoE: every expert tensor (weights, scales,
    biases, zero points, global scales) has one entry per expert on axis 0, whatever the
    packing. Its expert width is packed into bytes and blocks: not mapped. A separate
    router_weights input (input 14, [T, E]) is not mapped either."""
    _stop_hidden(ctx)
    if ctx.view.input(ctx.node, _QMOE_ROUTER_WEIGHTS) or ctx.attr("use_sparse_mixer", 0):
        ctx.block("router_weights or sparse-mixer routing is not mapped")
        return
    present = [
        index for index in range(_FC1, len(ctx.node.input))
        if index != _QMOE_ROUTER_WEIGHTS and ctx.node.input[index]
    ]  # fmt: skip
    shapes = [ctx.constant_shape(index) for index in present]
    fc1 = ctx.constant_shape(_FC1)
    if fc1 is None or any(not shape or shape[0] != fc1[0] for shape in shapes):
        ctx.block("an expert tensor is computed or lacks one entry per expert")
        return
    roles = {i: "weight" if i in (_FC1, 5, 8) else "param" for i in present}
    _route(ctx, fc1[0], roles)
