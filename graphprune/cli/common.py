"""What the commands share: one-line errors for unreadable option values."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GraphpruneError

APPROXIMATE_HELP = (
    "also prune channels normalized together by LayerNormalization (inexact: the kept "
    "channels' statistics change, as in Torch-Pruning)"
)


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """NAME=1,3,224,224 (or 1x3x224x224) for each item."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise GraphpruneError(
                f"bad --input-shape {item!r} (expected NAME=1,3,224,224)"
            ) from None
    return shapes


def read_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GraphpruneError(f"cannot read {what} {path}: {error}") from None
