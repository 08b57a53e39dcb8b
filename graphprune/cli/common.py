"""What the commands share: one-line errors for unreadable option values, output paths
checked before anything runs, and outputs written all or none."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import GraphpruneError, first_line
from ..io.loading import external_data_files

APPROXIMATE_HELP = (
    "also prune channels normalized together by LayerNormalization (inexact: the kept "
    "channels' statistics change, as in Torch-Pruning)"
)
APPROXIMATE_DYNAMIC_QUANT_HELP = (
    "also prune channels that a DynamicQuantizeLinear quantizes together (onnxruntime's "
    "quantize_dynamic; inexact: the kept channels are requantized on their own range)"
)
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
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise GraphpruneError(f"cannot read {what} {path}: {first_line(error)}") from None


def check_number(option: str, value: float | None, low: float, high: float = math.inf) -> None:
    """Refuse a given option value outside [low, high] or not finite."""
    if value is not None and not (low <= value <= high and math.isfinite(value)):
        raise GraphpruneError(f"{option} must be in [{low:g}, {high:g}], got {value}")


def check_outputs(
    outputs: dict[str, str | None], models: list[str], inputs: Sequence[str | None] = ()
) -> None:
    """Refuse, before anything runs, an output path (option -> path) that is an input (a
    model, its external data, a file in `inputs`), the path of another output, not a file,
    or in a folder that is missing or cannot be written."""
    given = {option: path for option, path in outputs.items() if path is not None}
    taken = {Path(path).resolve(): f"the input {path}" for path in [*models, *inputs] if path}
    if any(os.path.lexists(path) for path in given.values()):  # only then can it be one
        for model in models:
            taken |= dict.fromkeys(_external_files(model), f"external data of {model}")
    for option, path in given.items():
        if not path:
            raise GraphpruneError(f"{option} needs a path")
        resolved = Path(path).resolve()
        if resolved in taken:
            raise GraphpruneError(f"{option} {path} is {taken[resolved]}; choose another path")
        taken[resolved] = f"the path of {option}"
        if resolved.exists() and not resolved.is_file():
            raise GraphpruneError(f"{option} {path} exists and is not a file")
        _check_folder(option, resolved.parent)


def _external_files(model: str) -> set[Path]:
    try:
        return external_data_files(model)
    except GraphpruneError:
        return set()  # the model's own load reports what is wrong with it


def _check_folder(option: str, folder: Path) -> None:
    if not folder.is_dir():
        raise GraphpruneError(f"{option}: folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed on Linux: nothing to clean up
            pass
    except OSError as error:
        raise GraphpruneError(f"{option}: cannot write to {folder} ({error.strerror})") from None


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
