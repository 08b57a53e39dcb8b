"""What a plan does to each constant: the analysis' slice edits grouped per constant input,
applied to any array of the constant's shape.

The rewrite applies these edits to the weights themselves; applied to an array of the
positions (`np.arange(size).reshape(shape)`) they say which of the original values each
pruned constant keeps, which is what another framework's copy of the same weights needs
(`graphprune.torch.apply_plan`), without any op knowledge here either.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .analysis import Analysis
from .channels import SliceConstant, SliceGroupedInput
from .rewrite import apply_edit, edit_order


@dataclass(frozen=True)
class ConstantUse:
    """One node input that reads a stored constant (`storage`, an initializer or Constant
    output, through Identity chains) and the slice edits that the plan applies to it."""

    node: str
    input_index: int
    storage: str
    edits: tuple[SliceConstant | SliceGroupedInput, ...]

    def apply(self, value: np.ndarray, keep_atom: np.ndarray) -> np.ndarray:
        """`value` (the constant, or any array of its shape) as the pruned model holds it."""
        for edit in sorted(self.edits, key=edit_order):
            value = apply_edit(edit, value, keep_atom)
        return value


def constant_uses(analysis: Analysis) -> list[ConstantUse]:
    """Every constant input that some slice edit changes, in edit order (a constant read
    by several nodes has one use per node input: the rewrite gives each its own copy)."""
    view = analysis.view
    grouped: dict[tuple[str, int], list] = defaultdict(list)
    for edit in analysis.edits:
        if isinstance(edit, SliceConstant | SliceGroupedInput):
            grouped[(edit.node, edit.input_index)].append(edit)
    uses = []
    for (node, index), edits in grouped.items():
        name = view.nodes[node].input[index]
        storage = view.storage(name) or name
        uses.append(ConstantUse(node, index, storage, tuple(edits)))
    return uses


def kept_indices(analysis: Analysis, keep_atom: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Per sliced constant (by storage name): axis -> the original positions it keeps
    along that axis. A grouped convolution's input axis keeps different columns per group
    and is listed as the union; `ConstantUse.apply` gives the exact array."""
    kept: dict[str, dict[int, np.ndarray]] = {}
    for use in constant_uses(analysis):
        axes = kept.setdefault(use.storage, {})
        for edit in use.edits:
            axis = 1 if isinstance(edit, SliceGroupedInput) else edit.axis
            keep = keep_atom[edit.atoms]
            positions = (
                np.nonzero(keep.any(axis=0))[0]
                if isinstance(edit, SliceGroupedInput)
                else np.nonzero(keep)[0]
            )
            previous = axes.get(axis)
            axes[axis] = positions if previous is None else np.intersect1d(previous, positions)
    return kept
