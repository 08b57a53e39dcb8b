"""The models the benchmarks run, through the existing helpers: the zoo's cached exports
(models/export.py) and random feeds for any model (graphprune.runtime.inputs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `models` is a package at the repository root
    sys.path.insert(0, str(REPO))


def zoo(name: str, exporter: str = "classic") -> Path:
    """The cached export of zoo model `name` (models/zoo.py; exported on first use)."""
    from models.export import cached

    return cached(name, exporter)


def feeds(model: onnx.ModelProto, *, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Random inputs the model accepts (its static shapes, symbolic batch -> `batch`)."""
    from graphprune.runtime.inputs import input_shapes, random_inputs

    return random_inputs(model, input_shapes(model, batch=batch), seed)
