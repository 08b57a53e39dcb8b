"""From the plan of the user's export to the reference export, through the parameters.

Every removable channel is made by a layer whose weight holds it along one axis (a Conv's
or Linear's output, an embedding's column): a *source*. A source's weight in the user's
export is found among the module's parameters by name (the dynamo exporter keeps names,
even of a weight it folded a BatchNorm into), else by value: equal, transposed (a Linear
weight before MatMul), or equal up to one scale per channel (the classic exporter's
BatchNorm folding, under a new name). So the plan becomes "parameter P loses these
positions along axis a", and the reference export's sources, whose weights are
parameters by construction, remove the same ones; everything coupled to them follows from
the reference analysis itself.
"""

from __future__ import annotations

import numpy as np

from ..core.analysis import Analysis
from ..core.channels import SliceConstant
from ..errors import GraphpruneError
from .reference import Origin

Axis = tuple[str, int]  # (parameter name, axis of the parameter)
_SCALED_TOLERANCE = 1e-3


def source_weights(analysis: Analysis) -> dict[str, tuple[str, int]]:
    """Per source node: the stored constant holding its channels and their axis there."""
    view = analysis.view
    found: dict[str, tuple[str, int]] = {}
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant):
            continue
        atoms = analysis.source_atoms.get(edit.node)
        if (
            atoms is not None
            and not edit.absorbs
            and edit.role == "weight"
            and edit.node not in found
            and np.array_equal(edit.atoms, atoms)
        ):
            name = view.nodes[edit.node].input[edit.input_index]
            found[edit.node] = (view.storage(name) or name, edit.axis)
    return found


def removed_by_parameter(
    analysis: Analysis, keep_atom: np.ndarray, state: dict[str, np.ndarray]
) -> dict[Axis, np.ndarray]:
    """The plan on the user's export as positions removed from parameter axes."""
    weights = source_weights(analysis)
    removed: dict[Axis, np.ndarray] = {}
    for source, atoms in analysis.source_atoms.items():
        gone = ~keep_atom[atoms]
        if not gone.any():
            continue
        if source not in weights:
            raise GraphpruneError(f"layer '{source}' loses channels but holds no weight for them")
        storage, axis = weights[source]
        value = analysis.view.constant(storage)
        key = _find_parameter(storage, np.asarray(value), axis, state)
        positions = np.nonzero(gone)[0]
        if key in removed and not np.array_equal(removed[key], positions):
            raise GraphpruneError(
                f"parameter '{key[0]}' is used by two layers that lose different channels"
            )
        removed[key] = positions
    return removed


def _find_parameter(storage: str, value: np.ndarray, axis: int, state) -> Axis:
    """The parameter (and its axis) that a source's weight holds; see the module docstring."""
    if storage in state and state[storage].shape == value.shape:
        return storage, axis
    value = value.astype(np.float32, copy=False)
    candidates = [name for name, p in state.items() if p.size == value.size]
    for matches in (_equal, _scaled):
        found = {key for name in candidates for key in matches(name, state[name], value, axis)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            names = ", ".join(sorted(name for name, _ in found))
            raise GraphpruneError(f"weight '{storage}' matches several parameters ({names})")
    raise GraphpruneError(
        f"weight '{storage}' {list(value.shape)} matches no parameter of the module"
    )


def _equal(name: str, parameter: np.ndarray, value: np.ndarray, axis: int) -> list[Axis]:
    views = [(parameter, axis)]
    if parameter.ndim == 2:
        views.append((parameter.T, 1 - axis))
    return [
        (name, parameter_axis)
        for candidate, parameter_axis in views
        if candidate.shape == value.shape
        and np.allclose(
            candidate, value, rtol=2e-3, atol=1e-6 * float(np.abs(value).max(initial=0))
        )
    ]


def _scaled(name: str, parameter: np.ndarray, value: np.ndarray, axis: int) -> list[Axis]:
    """Equal up to one factor per position of `axis` (a norm folded into the weight)."""
    if parameter.shape != value.shape or value.ndim < 2:
        return []
    p = np.moveaxis(parameter, axis, 0).reshape(parameter.shape[axis], -1).astype(np.float64)
    v = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).astype(np.float64)
    norms = np.einsum("ij,ij->i", p, p)
    if not (norms > 0).all():
        return []
    scale = np.einsum("ij,ij->i", v, p) / norms
    residual = np.linalg.norm(v - scale[:, None] * p)
    return [(name, axis)] if residual <= _SCALED_TOLERANCE * np.linalg.norm(v) else []


def reference_keep(
    analysis: Analysis,
    origins: dict[str, Origin],
    shapes: dict[str, tuple[int, ...]],
    removed: dict[Axis, np.ndarray],
) -> np.ndarray:
    """keep_atom of the reference analysis that removes `removed` from its sources."""
    channels = _source_channels(analysis, origins, shapes)
    removed_sets = {key: set(positions.tolist()) for key, positions in removed.items()}
    gone_classes: list[np.ndarray] = []
    used: set[Axis] = set()
    for source, (key, coordinates) in channels.items():
        if key not in removed_sets:
            continue
        used.add(key)
        gone = np.array([c in removed_sets[key] for c in coordinates.tolist()])
        gone_classes.append(analysis.class_of[analysis.source_atoms[source][gone]])
    missing = sorted(name for name, _ in set(removed) - used)
    if missing:
        raise GraphpruneError(
            f"the reference export has no prunable layer holding {', '.join(missing[:3])}"
        )
    classes = np.unique(np.concatenate(gone_classes)) if gone_classes else np.zeros(0, np.int64)
    keep_atom = ~np.isin(analysis.class_of, classes)
    _check(analysis, keep_atom, channels, removed_sets, classes)
    return keep_atom


def _source_channels(analysis, origins, shapes) -> dict[str, tuple[Axis, np.ndarray]]:
    """Per reference source whose weight is a parameter: the parameter axis that holds
    its channels, and each channel's position along it."""
    found = {}
    for source, (storage, axis) in source_weights(analysis).items():
        origin = origins.get(storage)
        if origin is None:
            continue
        shape = shapes[origin.state]
        positions = np.moveaxis(origin.positions(shape), axis, 0)
        rows = positions.reshape(positions.shape[0], -1)
        for parameter_axis, size in enumerate(shape):
            stride = int(np.prod(shape[parameter_axis + 1 :], dtype=np.int64))
            coordinate = np.where(rows >= 0, (rows // stride) % size, -1)
            first = coordinate.max(axis=1)
            valid = coordinate >= 0
            constant = ((coordinate == first[:, None]) | ~valid).all()
            if constant and (first >= 0).all() and np.unique(first).size == first.size:
                found[source] = ((origin.state, parameter_axis), first)
                break
    return found


def _check(analysis, keep_atom, channels, removed_sets, classes) -> None:
    """The reference analysis must remove exactly what the plan removes, in groups it can
    prune."""
    for source, (key, coordinates) in channels.items():
        expected = np.array([c in removed_sets.get(key, ()) for c in coordinates.tolist()])
        if not np.array_equal(~keep_atom[analysis.source_atoms[source]], expected):
            raise GraphpruneError(
                f"parameter '{key[0]}' would lose other channels than the plan says: the "
                "module couples channels that the export keeps apart"
            )
    for group_id in np.unique(analysis.group_of_class[classes]).tolist():
        if group_id < 0:
            raise GraphpruneError("the reference export has the plan's channels in no group")
        group = analysis.groups[group_id]
        if not group.prunable:
            raise GraphpruneError(
                f"the reference export cannot remove channels of '{group.name}': {group.reasons[0]}"
            )
