"""The vocabulary of the analysis: channel layouts and the edits that removal implies.

Every prunable channel is an *atom*, an integer id created by the op that produces the
channel (a Conv's output channel, a Gemm's output feature). A tracked tensor carries a
`Layout`: which of its axes holds atoms, and the atom at each position of that axis
(positions may repeat an atom, e.g. after Flatten each channel owns a block of features).
Ops that force channels to be removed together *couple* atoms; coupled atoms form a class,
the unit of removal. What removal changes in the graph is recorded as edits, each a pure
function of the set of kept atoms, so the rewrite needs no op knowledge of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

Kind = Literal["channels", "mlp", "heads", "hidden", "experts", "blocks"]
"""What a group's channels are: convolution channels, widths of linear layers (MLP),
attention heads, a transformer's hidden size (its residual stream), the experts of a
mixture-of-experts block (the router's logits, chosen by a TopK), or residual blocks
(depth: one class per droppable unit, `graphprune.core.blocks`)."""
KINDS: tuple[Kind, ...] = get_args(Kind)

Role = Literal["weight", "bias", "bn_scale", "param"]
"""What a sliced constant holds: "weight" values score importance, "bn_scale" serves the
BatchNorm criterion, "bias" and "param" (norm shifts, elementwise operands) only follow."""


@dataclass(frozen=True)
class Reason:
    """Why channels cannot go (a barrier) or go only approximately: the op and node that
    decided it, when one did, and what it found; `option`, the command-line option that
    lifts the barrier (an opted-in approximation), when one does."""

    message: str
    op: str | None = None
    node: str | None = None
    option: str | None = None

    def __str__(self) -> str:
        if self.op is None:
            return self.message
        return f"{self.op} '{self.node}': {self.message}"


@dataclass(frozen=True)
class Layout:
    """Atoms along one axis of a tensor; `atoms[i]` is the channel at position i.

    `tiled`: the axis merges a symbolic dim (outer) with the channels (inner), as in a
    reshape of [S, B, H*D] to [S, B*H, D] with a symbolic batch B, so position p holds
    `atoms[p % len(atoms)]` and the axis is len(atoms) times an unknown size. Only rules
    registered with `tiled=True` accept such an input; at any other op it is a barrier.

    `count`: the tensor is a shape vector (or scalar) read at runtime whose entry `axis`
    is the number of kept positions of `atoms` (times the symbolic size when tiled), as
    Shape -> Slice -> Concat builds a reshape target. Only count rules accept it.

    `index`: the tensor's values are positions of `atoms` (the indices a TopK over the
    channel axis returns: which experts each token goes to); it has no channel axis
    (`axis` is -1). Only index rules accept it."""

    axis: int
    atoms: np.ndarray
    tiled: bool = False
    count: bool = False
    index: bool = False

    @property
    def size(self) -> int:
        return int(self.atoms.shape[0])


@dataclass(frozen=True)
class Quantized:
    """A constant input holds quantized values q: its real value is (q - zero_point) *
    scale, where `scale` and `zero_point` (None: 0) are inputs of the same node, per
    tensor (`axis` None), per position of `axis`, or per block of `block_size` positions
    along `axis`. `bits` < 8: `8 // bits` values packed in a byte along the last axis,
    low bits first (MatMulNBits), with the zero points packed likewise."""

    scale: int | None
    zero_point: int | None
    axis: int | None = None
    block_size: int = 0
    bits: int = 8


@dataclass(frozen=True)
class SliceConstant:
    """Keep only the positions of `atoms` that survive along `axis` of a constant input.

    `absorbs` marks the consumer side (a Conv's input channels, a Gemm's input features):
    zeroing exactly those positions in the original model is the masking oracle.
    `role` says what the values are (see `Role`). `quantized`: the values are quantized
    (importance reads them dequantized; the oracle sets them to their zero point, which
    dequantizes to 0). `pack`: that many positions share one byte along `axis`, low bits
    first (4-bit zero points): the rewrite unpacks, slices and packs again.
    """

    node: str
    input_index: int
    axis: int
    atoms: np.ndarray
    role: Role = "param"
    absorbs: bool = False
    quantized: Quantized | None = None
    pack: int = 1


@dataclass(frozen=True)
class SliceGroupedInput:
    """A grouped Conv's input channels: `atoms` has shape (groups, channels per group) and
    weight row r belongs to group r // (rows / groups); every group keeps the same count."""

    node: str
    input_index: int
    atoms: np.ndarray
    role: Role = "weight"
    absorbs: bool = True
    quantized: Quantized | None = None


@dataclass(frozen=True)
class Target:
    """An integer the rewrite sets: an attribute (scalar or list entry) or an entry of a
    constant input. `fallback` is the full original list when the node omits it (Split with
    num_outputs), so the rewrite can make it explicit. `path`: when the integer is stored
    upstream of the node whose rule needs it (a shape built by a Concat that a Reshape
    reads), the (node, input index) hops from that node down to `node`; a shape
    computation shared by consumers that keep different counts (one repeat-KV shape for
    every layer) is then split per consumer by the rewrite."""

    node: str
    input_index: int | None = None
    attribute: str | None = None
    entry: int | None = None
    fallback: tuple[int, ...] | None = None
    path: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class SetCount:
    """Set `target` to the number of positions of `atoms` that are kept."""

    target: Target
    atoms: np.ndarray


@dataclass(frozen=True)
class MaskInput:
    """For the masking oracle only: removal of these positions of a computed input equals
    setting them to `fill`: zero in a contraction between two activations, where no weight
    absorbs them; -inf in a router's logits, where removing an expert means that the TopK
    can never pick it. The rewrite has nothing to do here: the producers' edits remove the
    positions."""

    node: str
    input_index: int
    axis: int
    atoms: np.ndarray
    rank: int
    fill: float = 0.0


@dataclass(frozen=True)
class Bypass:
    """Removal of `atoms` (a residual block's) makes the node's output its input
    `input_index`: y = x + f(x) becomes y = x, and the branch, left unused, goes. The
    oracle zeroes the branch instead (a `MaskInput` on the node's other input)."""

    node: str
    input_index: int
    atoms: np.ndarray


Edit = SliceConstant | SliceGroupedInput | SetCount | MaskInput | Bypass


def edit_node(edit: Edit) -> str:
    """The node an edit changes."""
    return edit.target.node if isinstance(edit, SetCount) else edit.node


@dataclass(frozen=True)
class CachePort:
    """A graph input or output of a KV cache (`--prune-kv-cache`): `axis` holds one head
    per position (`atoms`), so the cache loses the heads its attention loses; the caller
    feeds and reads the cache at the kept heads' width (the contract changes here alone)."""

    name: str
    axis: int
    atoms: np.ndarray
    output: bool

    def kept(self, keep_atom: np.ndarray) -> np.ndarray:
        """The positions of `axis` that stay."""
        return np.flatnonzero(keep_atom[self.atoms])
