"""What the commands share: one-line errors for unreadable option values, output paths
checked before anything runs, and outputs written all or none."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import GraphpruneError, first_line
from ..io.loading import external_data_files
from ..io.paths import readable_file, readable_files, shown, writable_file

APPROXIMATE_HELP = (
    "also prune channels normalized together by LayerNormalization (inexact: the kept "
    "channels' statistics change, as in Torch-Pruning)"
)
APPROXIMATE_DYNAMIC_QUANT_HELP = (
    "also prune channels that a DynamicQuantizeLinear quantizes together (onnxruntime's "
    "quantize_dynamic; inexact: the kept channels are requantized on their own range)"
)
_FOLDER_OPTIONS = {"--calib"}  # input options that take a folder of .npz files too
RUN_TIMEOUT_HELP = "stop any one onnxruntime run after this many seconds (a Loop that never ends)"


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """NAME=1,3,224,224 (or 1x3x224x224) for each item; every dim a positive integer."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if not name or not shape or min(shape) < 1:
            raise GraphpruneError(f"bad --input-shape {item!r} (expected NAME=1,3,224,224)")
        shapes[name] = shape
    return shapes


def read_json(path: str, what: str) -> object:
    try:
        return json.loads(readable_file(path, what).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: {first_line(error)}") from None


def check_number(option: str, value: float | None, low: float, high: float = math.inf) -> None:
    """Refuse a given option value outside [low, high] or not finite."""
    if value is not None and not (low <= value <= high and math.isfinite(value)):
        raise GraphpruneError(f"{option} must be in [{low:g}, {high:g}], got {value}")


def check_outputs(
    outputs: dict[str, str | None], models: list[str], inputs: dict[str, str | None] | None = None
) -> None:
    """Refuse, before anything runs, a model or input file (option -> path; --calib: a
    folder of .npz files too) that cannot be read, and an output path (option -> path)
    that is an input (a model, its external data, a file in `inputs`), the path of
    another output, not a file, or in a folder that is missing or cannot be written
    (`graphprune.io.paths`)."""
    for model in models:
        readable_file(model, "the model")
    given_inputs = {option: path for option, path in (inputs or {}).items() if path is not None}
    for option, path in given_inputs.items():
        if option in _FOLDER_OPTIONS:
            readable_files(path, option, ".npz")
        else:
            readable_file(path, option)
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        writable_file(path, option)
    # realpath, not Path.resolve: it raises on no link loop.
    read = [*models, *given_inputs.values()]
    taken = {os.path.realpath(path): f"the input {shown(path)}" for path in read}
    if any(os.path.lexists(path) for path in given.values()):  # only then can it be one
        for model in models:
            external = map(str, _external_files(model))
            taken |= dict.fromkeys(external, f"external data of {shown(model)}")
    for option, path in given.items():
        resolved = os.path.realpath(path)
        if resolved in taken:
            raise GraphpruneError(
                f"{option} {shown(path)} is {taken[resolved]}; choose another path"
            )
        taken[resolved] = f"the path of {option}"


def _external_files(model: str) -> set[Path]:
    try:
        return external_data_files(model)
    except GraphpruneError:
        return set()  # the model's own load reports what is wrong with it


def write_all(writes: list[tuple[str, Callable[[], object]]]) -> None:
    """Run each (path, writer) in order, all or none: after a failure the outputs new in
    this run are removed again, so that a failed run leaves nothing behind."""
    new = [Path(path) for path, _ in writes if not os.path.lexists(path)]
    try:
        for _, write in writes:
            write()
    except BaseException as error:
        for path in new:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise GraphpruneError(f"cannot write the outputs: {first_line(error)}") from None
        raise
