"""The registry of channel rules: `@rule("Relu", "Sigmoid")` registers a function for ops
of the default domain, `@rule("FastGelu", domain="com.microsoft")` for another one."""

from __future__ import annotations

from collections.abc import Callable

from .context import Context

Rule = Callable[[Context], None]
RULES: dict[tuple[str, str], Rule] = {}


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[(domain, op_type)] = function
        return function

    return register


def find_rule(domain: str, op_type: str) -> Rule | None:
    return RULES.get((domain, op_type))
