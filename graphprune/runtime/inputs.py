"""Model inputs for validation, calibration and benchmarks: concrete shapes for symbolic
dims, seeded random values, NPZ files. Nothing here needs onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import onnx

from ..errors import GraphpruneError, first_line
from ..io.protos import graph_inputs, input_dtype

DEFAULT_DIM = 224  # for symbolic non-batch input dims when the user gives no shape
DEFAULT_LENGTH = 16  # the same for integer inputs (sequences of token ids)


def input_shapes(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]] | None = None, batch: int = 1
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: given ones, else static dims with symbolic batch -> `batch`
    and other symbolic dims -> DEFAULT_DIM (images), or DEFAULT_LENGTH for integer inputs
    (token ids: a short sequence fits any position table)."""
    shapes = {}
    for info in graph_inputs(model):
        if given and info.name in given:
            shapes[info.name] = tuple(given[info.name])
            continue
        dtype = input_dtype(info)
        default = DEFAULT_LENGTH if np.issubdtype(dtype, np.integer) else DEFAULT_DIM
        dims = []
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:  # Paddle writes -1 for "any"
                dims.append(int(dim.dim_value))
            else:
                dims.append(batch if axis == 0 else default)
        shapes[info.name] = tuple(dims)
    return shapes


def random_inputs(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        if info.name in shapes:
            feeds[info.name] = random_array(rng, input_dtype(info), shapes[info.name])
    return feeds


def random_array(rng: np.random.Generator, dtype: np.dtype, shape) -> np.ndarray:
    """Standard normal floats, all-true booleans, integers in {0, 1} (valid token ids,
    indices and flags for any table)."""
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    return rng.integers(0, 2, size=shape).astype(dtype)


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise GraphpruneError(f"cannot read inputs {path}: {first_line(error)}") from None


