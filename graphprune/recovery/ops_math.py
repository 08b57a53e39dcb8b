"""Elementwise ops, reductions and matrix products of the lowering, as the ONNX operator
spec defines them (numpy broadcasting, which torch shares)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import op

# Binary arithmetic: a scalar constant here is part of the function, not a weight.


@op("Add")
def add(node, a, b):
    return a + b


@op("Sub")
def sub(node, a, b):
    return a - b


@op("Mul")
def mul(node, a, b):
    return a * b


@op("Div")
def div(node, a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


@op("Pow", frozen=(1,))
def power(node, a, b):
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)


@op("Mod")
def mod(node, a, b):
    return torch.fmod(a, b) if node.attr("fmod", 0) else torch.remainder(a, b)


@op("Max")
def maximum(node, *xs):
    return _fold(torch.maximum, xs)


@op("Min")
def minimum(node, *xs):
    return _fold(torch.minimum, xs)


@op("Sum")
def total(node, *xs):
    return _fold(torch.add, xs)


@op("Mean")
def mean(node, *xs):
    return _fold(torch.add, xs) / len(xs)


def _fold(fn, xs):
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


@op("Where")
def where(node, cond, a, b):
    return torch.where(cond, a, b)


@op("Clip", frozen=(1, 2))
def clip(node, x, low=None, high=None):
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype, device=x.device))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device))
    return x


# Comparisons and logic.

for _name, _fn in {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
}.items():  # fmt: skip
    op(_name)(lambda node, a, b, _fn=_fn: _fn(a, b))

# Unary ops without attributes.

for _name, _fn in {
    "Not": torch.logical_not, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
    "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin,
    "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos,
    "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Tanh": torch.tanh,
    "Erf": torch.erf, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Softsign": F.softsign,
    "IsNaN": torch.isnan, "Mish": F.mish,
}.items():  # fmt: skip
    op(_name)(lambda node, x, _fn=_fn: _fn(x))


@op("Softplus")
def softplus(node, x):
    return torch.log1p(torch.exp(-x.abs())) + torch.relu(x)  # log(exp(x) + 1), stable


@op("IsInf")
def is_inf(node, x):
    positive, negative = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))


@op("LeakyRelu")
def leaky_relu(node, x):
    return F.leaky_relu(x, node.attr("alpha", 0.01))


@op("Elu")
def elu(node, x):
    return F.elu(x, node.attr("alpha", 1.0))


@op("Celu")
def celu(node, x):
    return F.celu(x, node.attr("alpha", 1.0))


@op("Selu")
def selu(node, x):
    alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr(
        "gamma", 1.05070102214813232421875)  # fmt: skip
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("ThresholdedRelu")
def thresholded_relu(node, x):
    return torch.where(x > node.attr("alpha", 1.0), x, torch.zeros_like(x))


@op("HardSigmoid")
def hard_sigmoid(node, x):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@op("HardSwish")
def hard_swish(node, x):
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@op("Gelu")
def gelu(node, x):
    return F.gelu(x, approximate=node.attr("approximate", "none"))


@op("PRelu", scalar_weights=True)
def prelu(node, x, slope):
    return torch.where(x < 0, x * slope, x)


# Softmax family: before opset 13 the input is coerced to 2-D at `axis`.


def _softmax_like(node, x, fn):
    if node.opset >= 13:
        return fn(x, node.attr("axis", -1))
    axis = node.attr("axis", 1) % max(x.dim(), 1)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, 1).reshape(x.shape)


@op("Softmax")
def softmax(node, x):
    return _softmax_like(node, x, torch.softmax)


@op("LogSoftmax")
def log_softmax(node, x):
    return _softmax_like(node, x, torch.log_softmax)


@op("Hardmax")
def hardmax(node, x):
    def fn(t, axis):
        return F.one_hot(t.argmax(axis), t.shape[axis]).movedim(-1, axis).to(t.dtype)

    return _softmax_like(node, x, fn)


# Reductions: axes became an input in opset 13 (ReduceSum) and 18 (the others).


def _axes(node, x, given, moved_at: int):
    if node.opset >= moved_at:
        axes = [] if given is None else [int(a) for a in given.reshape(-1).tolist()]
    else:
        axes = list(node.attr("axes", []))
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) == 0 else []
    return [a % x.dim() for a in axes] if x.dim() else []


def _reduction(name, fn, moved_at=18):
    def lowered(node, x, given=None):
        axes = _axes(node, x, given, moved_at)
        keep = bool(node.attr("keepdims", 1))
        if axes == []:
            return x
        # No axes: all of them (for a 0-d tensor torch reduces all with [] too).
        return fn(x, list(range(x.dim())) if axes is None else axes, keep)

    op(name)(lowered)


_reduction("ReduceSum", lambda x, a, k: torch.sum(x, a, keepdim=k), moved_at=13)
_reduction("ReduceMean", lambda x, a, k: torch.mean(x, a, keepdim=k))
_reduction("ReduceMax", lambda x, a, k: torch.amax(x, a, keepdim=k))
_reduction("ReduceMin", lambda x, a, k: torch.amin(x, a, keepdim=k))
_reduction("ReduceProd", lambda x, a, k: _prod(x, a, k))
_reduction("ReduceL1", lambda x, a, k: torch.sum(x.abs(), a, keepdim=k))
_reduction("ReduceL2", lambda x, a, k: torch.sqrt(torch.sum(x * x, a, keepdim=k)))
_reduction("ReduceSumSquare", lambda x, a, k: torch.sum(x * x, a, keepdim=k))
_reduction("ReduceLogSum", lambda x, a, k: torch.log(torch.sum(x, a, keepdim=k)))
_reduction("ReduceLogSumExp", lambda x, a, k: torch.logsumexp(x, a, keepdim=k))


def _prod(x, axes, keep):
    for axis in sorted(axes, reverse=True):
        x = torch.prod(x, axis, keepdim=keep)
    return x


def _arg(node, x, fn):
    axis = node.attr("axis", 0) % x.dim()
    if node.attr("select_last_index", 0):
        flipped = fn(x.flip(axis), axis, keepdim=True)
        out = x.shape[axis] - 1 - flipped
    else:
        out = fn(x, axis, keepdim=True)
    return out if node.attr("keepdims", 1) else out.squeeze(axis)


@op("ArgMax")
def argmax(node, x):
    return _arg(node, x, torch.argmax)


@op("ArgMin")
def argmin(node, x):
    return _arg(node, x, torch.argmin)


@op("CumSum")
def cumsum(node, x, axis):
    axis = int(axis.reshape(-1)[0]) % x.dim()
    if node.attr("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if node.attr("exclusive", 0):
        out = out - x
    return out.flip(axis) if node.attr("reverse", 0) else out


@op("TopK", frozen=(1,))
def topk(node, x, k):
    axis = node.attr("axis", -1)
    count = int(k.reshape(-1)[0]) if node.opset >= 10 else node.attr("k")
    largest = bool(node.attr("largest", 1))
    values, indices = torch.topk(x, count, axis, largest=largest, sorted=True)
    return values, indices


# Products.


@op("MatMul", scalar_weights=True)
def matmul(node, a, b):
    return torch.matmul(a, b)


@op("Gemm", scalar_weights=True)
def gemm(node, a, b, c=None):
    if node.attr("transA", 0):
        a = a.transpose(0, 1)
    if node.attr("transB", 0):
        b = b.transpose(0, 1)
    out = node.attr("alpha", 1.0) * (a @ b)
    if c is not None:
        out = out + node.attr("beta", 1.0) * c
    return out


@op("Einsum", scalar_weights=True)
def einsum(node, *xs):
    return torch.einsum(node.attr("equation").replace(" ", ""), *xs)


@op("FusedMatMul", domain="com.microsoft", scalar_weights=True)
def fused_matmul(node, a, b):
    if node.attr("transBatchA", 0) or node.attr("transBatchB", 0):
        raise node.refuse("transBatchA/transBatchB are not supported")
    if node.attr("transA", 0):
        a = a.transpose(-1, -2)
    if node.attr("transB", 0):
        b = b.transpose(-1, -2)
    return node.attr("alpha", 1.0) * torch.matmul(a, b)
