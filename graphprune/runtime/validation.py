"""Validation: the pruned model keeps the original's interface (`graphprune.io.interface`:
the same required inputs and outputs), then both run on the same inputs, exactly the
original's required ones, and their outputs are compared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np
import onnx

from ..errors import GraphpruneError
from ..io.interface import Interface, interface_of, interface_problem, resized
from .sessions import execution_provider, run, session


class Deviation(TypedDict):
    max_abs: float | None
    max_rel: float | None  # max_abs over the largest |expected| of the output


class _Output(Deviation):
    name: str
    shape: list[int]


class OutputDeviation(_Output, total=False):
    shape_before: list[int]  # only where the user let outputs lose channels


class _Validation(TypedDict):
    execution_provider: str
    outputs: list[OutputDeviation]


class Validation(_Validation, total=False):
    skipped: str  # why the models were not run (too large for the memory available)
    mode: str  # which validation ran ("layer by layer against the masked original")
    layers: list[OutputDeviation]  # the residual stream after each layer (layer by layer)


def skipped(
    provider: str,
    why: str,
    *,
    interface: Interface,
    pruned: onnx.ModelProto,
    shapes_may_change: bool = False,
) -> Validation:
    """The validation of models not run here (too large, or --no-validate): the interface
    alone is checked; none ran, and why."""
    check_interface(interface, pruned, shapes_may_change=shapes_may_change)
    return {"execution_provider": provider, "outputs": [], "skipped": why}


def check_interface(
    interface: Interface, pruned: onnx.ModelProto, *, shapes_may_change: bool = False
) -> None:
    """Raise a one-line GraphpruneError when `pruned` breaks the contract with the
    original's `interface`: a caller of the original could not call it the same way."""
    problem = interface_problem(interface, pruned, outputs_may_shrink=shapes_may_change)
    if problem is not None:
        raise GraphpruneError(f"interface changed: {problem}")


def compare(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    shapes_may_change: bool = False,
    expected: list[np.ndarray] | None = None,
    interface: Interface | None = None,
    cache: Mapping[str, tuple[int, np.ndarray]] | None = None,
) -> Validation:
    """Check the interface (`interface`: the original's as the user gave it, by default
    read from `original`), then run both models on the same inputs, exactly the
    original's required ones (the original only when its outputs are not `expected`
    already: `probe` ran it); raise if the pruned outputs change shape, unless the user
    asked to prune output channels (then the deviation is not defined: None).

    `cache` (name -> axis, kept positions): the KV cache inputs and outputs that lost
    heads (--prune-kv-cache). The pruned model is fed each cache input at the kept heads
    and its cache outputs are compared with the original's at the kept heads; its
    interface must be the original's with exactly those dims narrowed."""
    cache = dict(cache or {})
    sizes = {name: (axis, int(kept.size)) for name, (axis, kept) in cache.items()}
    interface = resized(interface or interface_of(original), sizes)
    check_interface(interface, pruned, shapes_may_change=shapes_may_change)
    unfed = set(interface.required_names) - set(feeds)
    if unfed:  # a feed for each required input: no input the pruned model wants more
        raise GraphpruneError(f"no validation input for '{sorted(unfed)[0]}'")
    provider = execution_provider()
    if expected is None:
        expected = run(session(original, provider), feeds)
    narrowed = {
        name: np.take(value, cache[name][1], axis=cache[name][0]) if name in cache else value
        for name, value in feeds.items()
    }  # fmt: skip
    actual = run(session(pruned, provider), narrowed)
    names = [output.name for output in original.graph.output]
    outputs: list[OutputDeviation] = []
    for name, a, b in zip(names, expected, actual, strict=True):
        if name in cache:  # the original's cache at the heads that stay
            a = np.take(a, cache[name][1], axis=cache[name][0])
        if a.shape == b.shape:
            found = deviation(a, b)
            if found["max_abs"] is None:
                raise GraphpruneError(
                    f"output '{name}' of the pruned model has NaN or inf where the "
                    "original's has not (or the reverse)"
                )
            outputs.append({"name": name, "shape": list(a.shape), **found})
        elif shapes_may_change and a.ndim == b.ndim:
            outputs.append(
                {
                    "name": name,
                    "shape_before": list(a.shape),
                    "shape": list(b.shape),
                    "max_abs": None,
                    "max_rel": None,
                }
            )
        else:
            raise GraphpruneError(
                f"output '{name}' changed shape {list(a.shape)} -> {list(b.shape)}"
            )
    return {"execution_provider": provider, "outputs": outputs}


def deviation(expected: np.ndarray, actual: np.ndarray) -> Deviation:
    """The largest absolute and relative difference; equal NaNs and infinities count as
    equal, and a difference that is not finite is None (not defined, as JSON can say)."""
    if not np.issubdtype(expected.dtype, np.number):
        return {"max_abs": float(np.any(expected != actual)), "max_rel": 0.0}
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    if not np.isfinite(diff).all():
        return {"max_abs": None, "max_rel": None}
    finite = np.abs(a[np.isfinite(a)])
    scale = float(finite.max()) if finite.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}
