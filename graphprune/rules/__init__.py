"""The per-op channel rules: one short function per ONNX op family.

A rule receives a `Context` for one node and describes, in the words of the ONNX operator
spec, how channel indices flow through the op. An op without a rule is a barrier: the
channels reaching it are frozen and the analysis says which op stopped them.

Registering: `@rule("Relu", "Sigmoid")` registers for the default domain,
`@rule("Attention", domain="com.microsoft")` for another one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..analysis import Context

Rule = Callable[["Context"], None]
RULES: dict[tuple[str, str], Rule] = {}


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[(domain, op_type)] = function
        return function

    return register


from . import conv, elementwise, linear, normalization, reduction, routing, shape  # noqa: E402,F401
