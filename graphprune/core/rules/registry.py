"""The registry of channel rules: `@rule("Relu", "Sigmoid")` registers a function for ops
of the default domain, `@rule("FastGelu", domain="com.microsoft")` for another one.

Two kinds of layout need a rule's explicit consent, because a rule written for plain
channels would map them wrongly: a tiled layout (`Layout.tiled`; `tiled=True`), and a
channel count read at runtime (`Layout.count`). Counts go to the op's `@count_rule`
(`counts`), or to the inputs a rule names in `count_inputs` (a Reshape's target shape).
Expert indices (`Layout.index`, what a TopK over the channel axis returns) go only to
the op's `@index_rule` (`moe`), when every tracked input of the node holds them.
Anything else stops them, with the reason, so an unforeseen use is never mapped wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from ...errors import first_line
from ..channels import Layout
from .context import Context

Rule = Callable[[Context], None]
RULES: dict[tuple[str, str], Rule] = {}
COUNT_RULES: dict[tuple[str, str], Rule] = {}
INDEX_RULES: dict[tuple[str, str], Rule] = {}
_TILED: set[tuple[str, str]] = set()
_COUNT_INPUTS: dict[tuple[str, str], tuple[int, ...]] = {}
_SUBGRAPHS: set[tuple[str, str]] = set()


def rule(
    *op_types: str, domain: str = "", tiled: bool = False, count_inputs: tuple[int, ...] = (),
    subgraphs: bool = False,
) -> Callable[[Rule], Rule]:  # fmt: skip
    """`subgraphs=True`: the rule walks the op's bodies itself (`walk_body`); channels read
    inside the subgraphs of any other op stop at it."""

    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[(domain, op_type)] = function
            if subgraphs:
                _SUBGRAPHS.add((domain, op_type))
            if tiled:
                _TILED.add((domain, op_type))
            if count_inputs:
                _COUNT_INPUTS[(domain, op_type)] = count_inputs
        return function

    return register


def count_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """A rule for an op whose every tracked input is a channel count (a shape vector)."""

    def register(function: Rule) -> Rule:
        for op_type in op_types:
            COUNT_RULES[("", op_type)] = function
        return function

    return register


def index_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """A rule for an op whose every tracked input holds expert indices (`Layout.index`)."""

    def register(function: Rule) -> Rule:
        for op_type in op_types:
            INDEX_RULES[("", op_type)] = function
        return function

    return register


def find_rule(domain: str, op_type: str) -> Rule | None:
    return RULES.get((domain, op_type))


def apply_rule(ctx: Context) -> None:
    """Let the node's rule state its channel flow, or stop what no rule can map. Channels
    a subgraph reads from the enclosing graph stop at its node unless the op's rule walks
    its bodies (If, Loop, Scan)."""
    key = (ctx.node.domain or "", ctx.node.op_type)
    if key not in RULES and key != ("", "Constant"):
        ctx.note_without_rule()
    if key not in _SUBGRAPHS:
        ctx.block_subgraph_reads()
    elif ctx.view.body_names_clash:
        why = " (two subgraphs define the same tensor name)"
        ctx.block_subgraph_reads(why)
        ctx.block(why.strip(" ()"))
        return
    mark = ctx.atom_mark()
    if not _applied(ctx, key) and key in _SUBGRAPHS:
        # Bodies not walked to the end: what they read and what they made stays.
        ctx.block_subgraph_reads(" (its subgraphs could not be mapped)")
        ctx.stop_atoms_since(mark, "made in a subgraph that could not be mapped")


def _applied(ctx: Context, key: tuple[str, str]) -> bool:
    """Run the rule when the inputs' layouts allow it; whether it ran without failing."""
    tracked = ctx.tracked()
    counts = [index for index, layout in tracked if layout.count]
    indices = [index for index, layout in tracked if layout.index]
    if any(ctx.input_shape(index) is None for index, _ in tracked):
        ctx.block("shape inference left the shape of an input with channels unknown")
    elif indices and len(indices) == len(tracked) and key in INDEX_RULES:
        _run(INDEX_RULES[key], ctx)
    elif indices:
        ctx.block("expert indices (a TopK over channels) are used here")
    elif counts and len(counts) == len(tracked) and key in COUNT_RULES:
        return _run(COUNT_RULES[key], ctx)
    elif any(index not in _COUNT_INPUTS.get(key, ()) for index in counts):
        ctx.block("a channel count read at runtime (Shape) is used here")
    elif key not in _TILED and any(layout.tiled for _, layout in tracked):
        ctx.block("channels share an axis with a symbolic dim (e.g. batch*heads)")
    elif key in RULES:
        return _run(RULES[key], ctx)
    elif tracked:
        domain = f"{key[0]}." if key[0] else ""
        ctx.block(f"no channel rule for op {domain}{key[1]}")
    return False


def _run(function: Rule, ctx: Context) -> bool:
    """Run a rule; one that fails on a malformed node (dims that contradict its weights,
    say) cannot state its channel mapping, so the node is a barrier for the channels that
    reach it and for those it made."""
    ctx.rule = f"{function.__module__.rpartition('.')[2]}.{function.__name__}"
    try:
        function(ctx)
    except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as error:
        ctx.block(f"channel rule failed ({type(error).__name__}: {first_line(error)})")
        ctx.freeze_own_atoms("its channel rule failed")
        return False
    return True


def walk_body(
    ctx: Context, body: onnx.GraphProto, inputs: Sequence[Layout | None]
) -> list[Layout | None]:
    """Run a subgraph's nodes through their rules, in the same walk: its inputs carry
    `inputs`, the outer-scope tensors it reads carry their own layouts (a read by name is
    an input in all but name). Returns the layouts of its outputs."""
    for info, layout in zip(body.input, inputs, strict=False):
        if layout is not None:
            ctx.assign(info.name, layout)
    for node in body.node:
        apply_rule(ctx.child(node))
    return [ctx.layout_of(output.name) for output in body.output]
