"""The op registry of the lowering: one torch function per ONNX op, with what the trainer
must know about its inputs.

    @op("Conv", frozen=(), scalar_weights=True)
    def conv(node, x, w, b=None): ...

A function takes the `Node` (attributes, opset, the interpreter for subgraphs) and the
node's inputs as torch tensors (None for an absent optional input) and returns one tensor
or a tuple, one per output. `frozen` lists input slots whose constants are never trained
(running statistics, quantization scales, resize scales); `scalar_weights` lets a
one-element constant in the other slots train (a one-channel bias) -- elsewhere a scalar
constant is part of the function (GELU's 0.5, attention's 1/sqrt(d)) and stays as it is;
`tables` are slots read by index (embedding tables), which train only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from ..errors import GraphpruneError

ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OpSpec:
    fn: Callable[..., Any]
    frozen: tuple[int, ...] = ()
    scalar_weights: bool = False
    tables: tuple[int, ...] = ()


REGISTRY: dict[tuple[str, str], OpSpec] = {}


def op(*names: str, domain: str = "", frozen: tuple[int, ...] = (), scalar_weights=False,
       tables: tuple[int, ...] = ()):  # fmt: skip
    """Register the decorated function for the ops `names` of `domain`."""

    def register(fn):
        for name in names:
            REGISTRY[(domain, name)] = OpSpec(fn, frozen, scalar_weights, tables)
        return fn

    return register


def canonical_domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


def lookup(node: onnx.NodeProto) -> OpSpec | None:
    domain = canonical_domain(node.domain)
    spec = REGISTRY.get((domain, node.op_type))
    if spec is None and domain == "com.microsoft":  # ORT also accepts some ONNX ops there
        spec = REGISTRY.get(("", node.op_type))
    if spec is None and domain == "":  # ORT's internal ops written in the ONNX domain
        spec = REGISTRY.get(("com.microsoft", node.op_type))
    return spec


class Unsupported(GraphpruneError):
    """An op (or an attribute value of one) the lowering cannot train."""


class Node:
    """A node as the op functions see it: attributes decoded, the opset of its domain, and
    `run_graph` to execute a subgraph (If, Loop) with the outer scope's values."""

    def __init__(self, proto: onnx.NodeProto, opset: int, run_graph: Callable | None = None):
        self.proto = proto
        self.op_type = proto.op_type
        self.opset = opset
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        self.run_graph = run_graph

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def outputs(self) -> int:
        return len(self.proto.output)

    def refuse(self, why: str) -> Unsupported:
        return Unsupported(f"cannot train op {self.op_type} (node {self.proto.name!r}): {why}")
