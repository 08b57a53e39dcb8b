"""What a rule sees of one node (`Context`) and where its statements go (`Recorder`).

The analyzer owns one `Recorder` for the whole walk; it hands each rule a `Context` for
one node. Rules read layouts, shapes, attributes and constants through the context and
state channel flow with its verbs:

- `emit(output, layout)`: an output carries these channels;
- `new_atoms(count)`: fresh channels produced here (a Conv's or Gemm's outputs);
- `opaque_atoms(count, reason)`: positions nothing may remove (an untracked Concat input);
- `couple(a, b)`, `couple_all(atoms)`: positions that must be removed together (each
  statement is kept with the rule, op and node that made it: `Coupling`);
- `slice(index, axis, atoms, role=..., absorbs=...)`: a constant input loses positions;
- `slice_upstream(index, constant, axis, atoms, ...)`: so does one of its producer's;
- `slice_at(node, constant, axis, atoms)`: so does a node's further upstream;
- `slice_grouped_input(index, atoms)`: a grouped Conv's input channels;
- `cache_input(index, axis, atoms)`: a graph input, a KV cache, loses heads (opt-in);
- `set_count(target, atoms)`: an integer (attribute or shape entry) becomes the kept count;
- `mask_input(index, axis, atoms, fill=0.0)`: for the oracle, `fill` equals removal here;
- `equal_blocks(atoms)`, `nonempty(atoms)`, `keep_at_least(atoms, count)`: planning constraints;
- `mark_heads(atoms)`, `mark_embedding(atoms)`, `mark_experts(atoms)`: the group's kind;
- `approximate(atoms, reason)`: an opted-in inexact removal;
- `block(reason)`: a barrier: every tracked input stops here, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx

from ...io.protos import outer_scope_reads
from ..channels import (
    CachePort,
    Edit,
    Layout,
    MaskInput,
    Quantized,
    Reason,
    Role,
    SetCount,
    SliceConstant,
    SliceGroupedInput,
    Target,
)
from ..dequantize import dequantize, dequantize_linear
from ..graph import GraphView


class Coupling(NamedTuple):
    """Position i of `first` and of `second` go together, and why: the `rule` (its module
    and function) that said so at `node`, an op of type `op`. (A tuple: rules state
    thousands of these per model.)"""

    first: np.ndarray
    second: np.ndarray
    rule: str
    op: str
    node: str


@dataclass
class Recorder:
    """Everything the rules state during one analysis, in the order they state it."""

    layouts: dict[str, Layout] = field(default_factory=dict)
    atom_count: int = 0
    atom_source: list[np.ndarray] = field(default_factory=list)  # per new_atoms call
    sources: list[str] = field(default_factory=list)  # producing nodes, by source index
    source_atoms: dict[str, np.ndarray] = field(default_factory=dict)
    untracked: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (atoms, node)
    couplings: list[Coupling] = field(default_factory=list)
    frozen: list[tuple[np.ndarray, Reason]] = field(default_factory=list)
    approximations: list[tuple[np.ndarray, Reason]] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    equal_blocks: list[np.ndarray] = field(default_factory=list)
    nonempty: list[np.ndarray] = field(default_factory=list)
    heads: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    experts: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (router node, atoms)
    minimums: list[tuple[np.ndarray, int]] = field(default_factory=list)
    cache_ports: list[CachePort] = field(default_factory=list)  # --prune-kv-cache
    without_rule: dict[str, int] = field(default_factory=dict)  # op -> nodes, tracked or not

    def new_atoms(self, count: int, source: str | None) -> np.ndarray:
        """`count` fresh atoms; `source` is the node that owns them (None: nobody)."""
        atoms = np.arange(self.atom_count, self.atom_count + count, dtype=np.int64)
        self.atom_count += count
        owner = -1 if source is None else len(self.sources)
        self.atom_source.append(np.full(count, owner, dtype=np.int64))
        if source is not None:
            self.sources.append(source)
            self.source_atoms[source] = atoms
        return atoms

    def freeze(self, atoms: np.ndarray, reason: Reason) -> None:
        self.frozen.append((np.asarray(atoms).ravel(), reason))

    def couple(self, first: np.ndarray, second: np.ndarray, rule: str, op: str, node: str):
        first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
        self.couplings.append(Coupling(first, second, rule, op, node))


class Context:
    """What a rule sees of one node, and the verbs it uses to describe channel flow."""

    def __init__(
        self,
        recorder: Recorder,
        view: GraphView,
        node: onnx.NodeProto,
        *,
        approximate_norms: bool = False,
        approximate_dynamic_quant: bool = False,
        prune_cache: bool = False,
    ) -> None:
        self._recorder = recorder
        self.prune_cache = prune_cache
        self.view = view
        self.node = node
        self.approximate_norms = approximate_norms
        self.rule = ""  # the running rule, "module.function" (set by the registry)
        self.approximate_dynamic_quant = approximate_dynamic_quant
        self._quantized: dict[int, Quantized] = {}

    # Reading the node.
    def layout(self, index: int) -> Layout | None:
        name = self.view.input(self.node, index)
        return None if name is None else self._recorder.layouts.get(name)

    def data_layout(self) -> Layout | None:
        """The data input's (input 0) layout. Channels that reach any other input (sizes,
        bounds, indices, parameters) cannot be mapped: they stop here and None is returned."""
        if any(index != 0 and not layout.count for index, layout in self.tracked()):
            self.block("channels reach a non-data input (sizes, bounds, indices or parameters)")
            return None
        return self.layout(0)

    def tracked(self) -> list[tuple[int, Layout]]:
        """(input index, layout) of every input that carries channels."""
        layouts = self._recorder.layouts
        return [
            (index, layouts[name])
            for index, name in enumerate(self.node.input)
            if name and name in layouts
        ]

    def attr(self, name: str, default=None):
        return self.view.attribute(self.node, name, default)

    def constant(self, index: int) -> np.ndarray | None:
        """A constant input's value; a weight dequantized from constants (QDQ) reads as
        its real values."""
        name = self.view.input(self.node, index)
        found = self._dequantized_weight(index)
        if found is not None:
            dq, quant = found
            inputs = [self.view.constant(n) if n else None for n in (*dq.input, "", "")[:3]]
            return dequantize(inputs[0], quant, inputs[1], inputs[2]).astype(inputs[1].dtype)
        return None if name is None else self.view.constant(name)

    def constant_shape(self, index: int) -> tuple[int, ...] | None:
        """Shape of a constant input (weights), None when it is computed at runtime. A
        weight that a DequantizeLinear of constants computes for this node alone (QDQ)
        counts as constant: slicing it slices the quantized values (`slice`)."""
        name = self.view.input(self.node, index)
        found = self._dequantized_weight(index)
        if found is not None:
            return self.view.constant_shape(found[0].input[0])
        return None if name is None else self.view.constant_shape(name)

    def _dequantized_weight(self, index: int) -> tuple[onnx.NodeProto, Quantized] | None:
        """The DequantizeLinear of constants that computes input `index` for this node
        alone (directly or through Identity nodes), and its quantization."""
        name = self.view.input(self.node, index)
        producer = None if name is None else self.view.producer(name)
        while (
            producer is not None
            and producer.op_type == "Identity"
            and len(self.view.consumers(name)) == 1
            and name not in self.view.graph_outputs
        ):
            name = producer.input[0]
            producer = self.view.producer(name)
        if (
            producer is None
            or producer.op_type != "DequantizeLinear"
            or producer.domain not in ("", "com.microsoft")
            or len(self.view.consumers(name)) != 1
            or name in self.view.graph_outputs
        ):
            return None
        quant = dequantize_linear(self.view, producer)
        return None if quant is None else (producer, quant)

    def input_shape(self, index: int):
        name = self.view.input(self.node, index)
        return None if name is None else self.view.shape(name)

    def output_shape(self, index: int = 0):
        if index >= len(self.node.output) or not self.node.output[index]:
            return None
        return self.view.shape(self.node.output[index])

    def target(self, **fields) -> Target:
        return Target(self.node.name, **fields)

    def reason(self, message: str, option: str | None = None) -> Reason:
        return Reason(message, self.node.op_type, self.node.name, option)

    # Describing channel flow.
    def emit(self, output_index: int, layout: Layout) -> None:
        if output_index < len(self.node.output) and self.node.output[output_index]:
            self._recorder.layouts[self.node.output[output_index]] = layout

    def new_atoms(self, count: int) -> np.ndarray:
        """Fresh channels produced by this node (its output channels)."""
        return self._recorder.new_atoms(count, self.node.name)

    def opaque_atoms(self, count: int, reason: str) -> np.ndarray:
        """Positions no rule can remove (e.g. an untracked input of a Concat)."""
        atoms = self._recorder.new_atoms(count, None)
        self._recorder.freeze(atoms, Reason(reason))
        self._recorder.untracked.append((atoms, self.node.name))
        return atoms

    def couple(self, first: np.ndarray, second: np.ndarray) -> None:
        """Position i of `first` and of `second` must be removed together."""
        self._recorder.couple(first, second, self.rule, self.node.op_type, self.node.name)

    def couple_all(self, atoms: np.ndarray) -> None:
        atoms = np.asarray(atoms).ravel()
        if atoms.size > 1:
            self.couple(np.full(atoms.size - 1, atoms[0]), atoms[1:])

    def slice(
        self,
        index: int,
        axis: int,
        atoms: np.ndarray,
        role: Role = "param",
        absorbs: bool = False,
        pack: int = 1,
    ) -> None:
        """A constant input loses positions (`pack` of them per byte: 4-bit codes). A
        quantized one (`quantized`, or a weight a DequantizeLinear of constants computes)
        takes its per-axis or blocked scale and zero point along."""
        found = self._dequantized_weight(index)
        if found is not None:
            dq, quant = found
            self._slice_quantized(dq.name, 0, axis, atoms, role, absorbs, quant)
        elif index in self._quantized:
            quant = self._quantized[index]
            self._slice_quantized(self.node.name, index, axis, atoms, role, absorbs, quant)
        else:
            edit = SliceConstant(self.node.name, index, axis, atoms, role, absorbs, pack=pack)
            self._recorder.edits.append(edit)

    def quantized(self, index: int, quant: Quantized) -> None:
        """Input `index` holds quantized values (QLinearConv's w with w_scale, w_zero_point),
        so `slice` slices its scale and zero point with it."""
        self._quantized[index] = quant

    def _slice_quantized(self, node, index, axis, atoms, role, absorbs, quant: Quantized) -> None:
        edits = self._recorder.edits
        edits.append(SliceConstant(node, index, axis, atoms, role, absorbs, quant))
        if quant.axis is None or quant.bits < 8:  # packed: the rule slices its parameters
            return
        owner = self.view.nodes[node]
        parameters = [i for i in (quant.scale, quant.zero_point) if i is not None]
        if not quant.block_size:
            if axis == quant.axis:  # one scale and zero point per position
                for i in parameters:
                    shape = self.view.constant_shape(owner.input[i])
                    if shape is not None and int(np.prod(shape)) > 1:
                        edits.append(SliceConstant(node, i, len(shape) - 1, atoms))
            return
        if axis == quant.axis:  # a block's positions share one scale: they go together
            size = quant.block_size
            self.couple(np.repeat(atoms[::size], size)[: atoms.size], atoms)
            atoms = atoms[::size]
        for i in parameters:
            edits.append(SliceConstant(node, i, axis, atoms))

    def slice_upstream(
        self, index: int, constant: int, axis: int, atoms: np.ndarray, role: Role = "param",
        absorbs: bool = False,
    ) -> None:  # fmt: skip
        """`slice` for constant input `constant` of the node that produces input `index`
        (a weight table that node gathers per row for this one to multiply by)."""
        producer = self.view.producer(self.node.input[index])
        self.slice_at(producer.name, constant, axis, atoms, role, absorbs)

    def slice_at(
        self, node: str, constant: int, axis: int, atoms: np.ndarray, role: Role = "param",
        absorbs: bool = False,
    ) -> None:  # fmt: skip
        """`slice` for constant input `constant` of `node`, further upstream (a per-channel
        operand that a chain of nodes computes for this one alone from that constant)."""
        self._recorder.edits.append(SliceConstant(node, constant, axis, atoms, role, absorbs))

    def slice_grouped_input(self, index: int, atoms: np.ndarray) -> None:
        node, quant = self.node.name, self._quantized.get(index)
        found = self._dequantized_weight(index)
        if found is not None:
            node, index, quant = found[0].name, 0, found[1]
        if quant is not None and quant.axis not in (None, 0):
            self.block("weight quantized along its input channels in groups")
            return
        self._recorder.edits.append(SliceGroupedInput(node, index, atoms, quantized=quant))

    def mask_input(self, index: int, axis: int, atoms: np.ndarray, fill: float = 0.0) -> None:
        """Oracle only: setting these positions of input `index` to `fill` (zero, or -inf
        for a router's logits) equals their removal."""
        rank = len(self.input_shape(index) or ())
        edit = MaskInput(self.node.name, index, axis, atoms, rank, fill)
        self._recorder.edits.append(edit)

    def cache_input(self, index: int, axis: int, atoms: np.ndarray) -> None:
        """Input `index` is a graph input, a KV cache with one head per position of `axis`:
        the caller feeds it at the kept heads' width (`CachePort`)."""
        name = self.view.input(self.node, index)
        port = CachePort(name, axis, np.asarray(atoms).ravel(), output=False)
        self._recorder.cache_ports.append(port)

    def set_count(self, target: Target, atoms: np.ndarray) -> None:
        self._recorder.edits.append(SetCount(target, atoms))

    def equal_blocks(self, atoms: np.ndarray) -> None:
        """Every row of `atoms` must lose the same number of positions."""
        if atoms.shape[0] > 1:
            self._recorder.equal_blocks.append(atoms)

    def nonempty(self, atoms: np.ndarray) -> None:
        self._recorder.nonempty.append(atoms)

    def keep_at_least(self, atoms: np.ndarray, count: int) -> None:
        """At least `count` positions of `atoms` must stay (a TopK's k)."""
        self._recorder.minimums.append((np.asarray(atoms).ravel(), int(count)))

    def mark_experts(self, atoms: np.ndarray) -> None:
        """These channels are the experts this node (a TopK, a fused MoE) routes to."""
        self._recorder.experts.append((self.node.name, np.asarray(atoms).ravel()))

    def mark_embedding(self, atoms: np.ndarray) -> None:
        """These channels are a transformer's hidden size (kind "hidden")."""
        self._recorder.embeddings.append(np.asarray(atoms).ravel())

    def mark_heads(self, atoms: np.ndarray) -> None:
        """These channels are attention heads (for --only heads and --head-ratio)."""
        self._recorder.heads.append(np.asarray(atoms).ravel())

    def approximate(self, atoms: np.ndarray, reason: str) -> None:
        """Removal changes the values of channels that stay (an opted-in approximation)."""
        self._recorder.approximations.append((np.asarray(atoms).ravel(), self.reason(reason)))

    def note_without_rule(self) -> None:
        op = f"{self.node.domain}.{self.node.op_type}" if self.node.domain else self.node.op_type
        self._recorder.without_rule[op] = self._recorder.without_rule.get(op, 0) + 1

    def child(self, node: onnx.NodeProto) -> Context:
        """The context of a node in one of this node's subgraphs (same walk, same options)."""
        return Context(
            self._recorder, self.view, node, approximate_norms=self.approximate_norms,
            approximate_dynamic_quant=self.approximate_dynamic_quant,
            prune_cache=self.prune_cache,
        )  # fmt: skip

    def layout_of(self, tensor: str) -> Layout | None:
        """The layout of any tensor by name (a subgraph's inputs and outputs)."""
        return self._recorder.layouts.get(tensor)

    def assign(self, tensor: str, layout: Layout) -> None:
        """A subgraph input carries these channels (a Loop's state, a Scan's slices)."""
        self._recorder.layouts[tensor] = layout

    def atom_mark(self) -> int:
        """A mark for `stop_atoms_since`: how many atoms exist now."""
        return self._recorder.atom_count

    def stop_atoms_since(self, mark: int, reason: str) -> None:
        """Every atom created after `mark` (in this node's subgraphs) cannot go."""
        if self._recorder.atom_count > mark:
            self.stop(np.arange(mark, self._recorder.atom_count, dtype=np.int64), reason)

    def stop(self, atoms: np.ndarray, reason: str) -> None:
        """These channels cannot go: a barrier at this node for channels that are not
        among its inputs (those a subgraph returns)."""
        self._recorder.freeze(atoms, self.reason(reason))

    def block_subgraph_reads(self, why: str = "") -> None:
        """Channels read inside this node's subgraphs stop here (outer-scope reads are
        the node's inputs in all but name)."""
        layouts = self._recorder.layouts
        for name in sorted(outer_scope_reads(self.node)):
            if name in layouts:
                reason = self.reason(f"'{name}' is read inside a subgraph{why}")
                self._recorder.freeze(layouts[name].atoms, reason)

    def freeze_own_atoms(self, reason: str, option: str | None = None) -> None:
        """The channels this node created may not go either."""
        atoms = self._recorder.source_atoms.get(self.node.name)
        if atoms is not None:
            self._recorder.freeze(atoms, self.reason(reason, option))

    def block(self, reason: str, option: str | None = None) -> None:
        """Stop every tracked input here: this op cannot map their channels exactly
        (`option`: the command-line option under which it maps them approximately)."""
        for _, layout in self.tracked():
            self._recorder.freeze(layout.atoms, self.reason(reason, option))
