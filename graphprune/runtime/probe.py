"""Inputs the original model runs on, found before anything is pruned.

A model with symbolic dims says nothing about the sizes it accepts: a text recognizer
needs a small height, a detector a multiple of 32. The default shapes are tried first,
then a few candidate sizes (`inputs.candidate_shapes`); the first that runs is used and the
report says so. When none runs, the user learns it in one line naming what was tried,
instead of an onnxruntime error about the pruned model later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import GraphpruneError
from .inputs import candidate_shapes, random_inputs, shapes_text
from .sessions import execution_provider, session, too_big_to_run, try_run

_ADVICE = "choose shapes with --input-shape NAME=D,D,..."


@dataclass(frozen=True)
class ProbedInputs:
    """Feeds the original model runs on, its outputs on them (validation compares the
    pruned model against these), their shapes, and notes on how they were chosen."""

    feeds: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    expected: list[np.ndarray] | None  # None: the model was not run (`unrun`)
    provider: str
    notes: list[str] = field(default_factory=list)
    unrun: str | None = None  # why onnxruntime cannot run the model here


def unrun_inputs(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]] | None, seed: int, why: str
) -> ProbedInputs:
    """Seeded random inputs of the default shapes, for a model too large to run here
    (`why`): nothing is tried, so shapes and validation rest on the checks without it."""
    shapes = next(iter(candidate_shapes(model, given)))
    feeds = random_inputs(model, shapes, seed)
    return ProbedInputs(feeds, shapes, None, execution_provider(), [], why)


def choose_inputs(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]] | None = None, seed: int = 0
) -> ProbedInputs:
    """Seeded random inputs of the first candidate shapes the original model runs on
    (`given` shapes are kept as they are); raise a one-line error when none runs."""
    provider = execution_provider()
    why = too_big_to_run(model, provider)
    if why is not None:
        return unrun_inputs(model, given, seed, why)
    sess = session(model, provider)
    tried: list[dict[str, tuple[int, ...]]] = []
    errors: list[str] = []
    for shapes in candidate_shapes(model, given):
        feeds = random_inputs(model, shapes, seed)
        outputs, error = try_run(sess, feeds)
        if error is None:
            notes = []
            if tried:  # the default did not run: say what was used instead, and why
                notes.append(
                    f"inputs {shapes_text(shapes)}: the original model does not run on "
                    f"{_joined(tried)} (onnxruntime: {errors[0]})"
                )
            return ProbedInputs(feeds, shapes, outputs, provider, notes)
        tried.append(shapes)
        errors.append(error)
    raise GraphpruneError(
        f"the original model does not run on inputs {_joined(tried)} "
        f"(onnxruntime: {errors[0]}); {_ADVICE}"
    )


def check_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], source: str) -> ProbedInputs:
    """The user's inputs, once the original model has run on them."""
    provider = execution_provider()
    shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    why = too_big_to_run(model, provider)
    if why is not None:
        return ProbedInputs(feeds, shapes, None, provider, [], why)
    outputs, error = try_run(session(model, provider), feeds)
    if error is not None:
        raise GraphpruneError(
            f"the original model does not run on the inputs in {source} "
            f"({shapes_text(shapes)}; onnxruntime: {error})"
        )
    return ProbedInputs(feeds, shapes, outputs, provider)


def _joined(tried: list[dict[str, tuple[int, ...]]]) -> str:
    return ", ".join(shapes_text(shapes) for shapes in tried)
