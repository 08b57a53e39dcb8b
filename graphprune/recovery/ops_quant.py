"""Quantize/dequantize pairs (QDQ) and control flow of the lowering.

A QuantizeLinear output is held as a float tensor of integer values: rounding passes the
gradient straight through (the straight-through estimator), so the layers after a QDQ pair
train. Integer weights behind a DequantizeLinear train as float master copies: the lowering
feeds their codes, rounded straight-through from the master, and `writeback` stores the
codes with the model's own scales and zero points (`lowering.QuantizedWeight`).
Integer-arithmetic layers (QLinearConv, MatMulInteger: the QOperator format) have no rule
here and are refused by name."""

from __future__ import annotations

import torch

from .registry import op

RANGES = {
    torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767),
    torch.int32: (-(2**31), 2**31 - 1),
}  # fmt: skip


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forwards (half to even, as ONNX), the identity backwards."""
    return x + (torch.round(x) - x).detach()


def along(t: torch.Tensor | None, axis: int, rank: int) -> torch.Tensor | float:
    """A scale or zero point shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if t is None:
        return 0.0
    if t.numel() == 1 or rank == 0:
        return t.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return t.reshape(shape)


def code_range(node, zero_point) -> tuple[int, int]:
    dtype = zero_point.dtype if zero_point is not None else torch.uint8
    if dtype not in RANGES:
        raise node.refuse(f"quantized type {dtype} is not supported")
    return RANGES[dtype]


@op("QuantizeLinear", frozen=(1, 2))
def quantize(node, x, scale, zero_point=None):
    if node.attr("block_size", 0):
        raise node.refuse("blocked quantization is not supported")
    axis = node.attr("axis", 1)
    low, high = code_range(node, zero_point)
    zp = along(zero_point, axis, x.dim())
    zp = zp.to(x.dtype) if isinstance(zp, torch.Tensor) else zp
    return torch.clamp(ste_round(x / along(scale, axis, x.dim())) + zp, low, high)


@op("DequantizeLinear", frozen=(1, 2))
def dequantize(node, x, scale, zero_point=None):
    if node.attr("block_size", 0):
        raise node.refuse("blocked quantization is not supported")
    axis = node.attr("axis", 1)
    zp = along(zero_point, axis, x.dim())
    x = x.to(scale.dtype)
    return (x - (zp.to(scale.dtype) if isinstance(zp, torch.Tensor) else zp)) * along(
        scale, axis, x.dim())  # fmt: skip


@op("If")
def if_(node, cond):
    branch = node.attr("then_branch") if bool(cond.reshape(-1)[0]) else node.attr("else_branch")
    outs = node.run_graph(branch, [])
    return tuple(outs) if len(outs) > 1 else outs[0]


@op("Loop")
def loop(node, trips=None, cond=None, *carried):
    body = node.attr("body")
    limit = None if trips is None else int(trips.reshape(-1)[0])
    going = True if cond is None else bool(cond.reshape(-1)[0])
    state, scans = list(carried), []
    i = 0
    while going and (limit is None or i < limit):
        step_cond = torch.tensor(going) if cond is not None else torch.tensor(True)
        outs = node.run_graph(body, [torch.tensor(i, dtype=torch.int64), step_cond, *state])
        going = bool(outs[0].reshape(-1)[0])
        state, scan = list(outs[1 : 1 + len(state)]), outs[1 + len(state) :]
        scans.append(scan)
        i += 1
    count = len(body.output) - 1 - len(state)
    stacked = [torch.stack([s[j] for s in scans]) if scans else None for j in range(count)]
    if any(s is None for s in stacked):
        raise node.refuse("a Loop with scan outputs that runs no iteration is not supported")
    outs = [*state, *stacked]
    return tuple(outs) if len(outs) > 1 else outs[0]
