"""The module's parameters and buffers cut to the plan: the reference analysis' edits,
applied to the positions of each parameter, say which of its values stay."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.analysis import Analysis
from ..core.slices import constant_uses
from ..errors import GraphpruneError
from .reference import Reference


def kept_state(
    analysis: Analysis, reference: Reference, keep_atom: np.ndarray, shapes: dict
) -> dict[str, np.ndarray]:
    """Per parameter or buffer that loses values: the flat positions of the values it
    keeps, shaped as the pruned tensor. A grouped convolution's weight keeps other
    columns in each group, so the result is a gather, not always a product of slices."""
    kept: dict[str, np.ndarray] = {}
    for use in constant_uses(analysis):
        if all(keep_atom[edit.atoms].all() for edit in use.edits):
            continue
        origin = reference.origins.get(use.storage)
        if origin is None:
            if use.storage in reference.plain:
                continue  # a constant of the export's own (a zero bias, a mask)
            why = reference.mixed.get(use.storage, "where its values come from is unknown")
            raise GraphpruneError(f"constant '{use.storage}' loses values: {why}")
        shape = shapes[origin.state]
        positions = use.apply(origin.positions(shape), keep_atom)
        if origin.index is not None:
            positions = _as_slices(positions, shape, origin.state)
        previous = kept.get(origin.state)
        if previous is not None and not np.array_equal(previous, positions):
            raise GraphpruneError(
                f"parameter '{origin.state}' is read by two layers that keep different values"
            )
        kept[origin.state] = positions
    return kept


def _as_slices(positions: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The kept values of a parameter that the export rearranged (transposed, reshaped):
    per axis the positions that stay, which must hold exactly the kept values."""
    values = np.unique(positions[positions >= 0])
    coordinates = np.unravel_index(values, shape)
    axes = [np.unique(c) for c in coordinates]
    grid = np.ravel_multi_index(np.ix_(*axes), shape)
    if grid.size != values.size:
        raise GraphpruneError(f"parameter '{name}' keeps values that are no slice of it")
    return grid


def replace_state(module: Any, kept: dict[str, np.ndarray]) -> None:
    """Put the kept values in place of each parameter and buffer (every name of a shared
    one gets the same new tensor, so tied weights stay tied)."""
    import torch
    from torch import nn

    names: dict[int, list[str]] = {}
    tensors: dict[str, Any] = {}
    for name, tensor in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        names.setdefault(id(tensor), []).append(name)
        tensors[name] = tensor
    for name, positions in kept.items():
        old = tensors[name]
        index = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
        data = old.detach().reshape(-1)[index.reshape(-1).to(old.device)].reshape(index.shape)
        new = (
            nn.Parameter(data.clone(), old.requires_grad)
            if isinstance(old, nn.Parameter)
            else data.clone()
        )
        for alias in names[id(old)]:
            owner_name, _, leaf = alias.rpartition(".")
            owner = module.get_submodule(owner_name)
            if isinstance(new, nn.Parameter):
                owner._parameters[leaf] = new
            else:
                owner._buffers[leaf] = new
