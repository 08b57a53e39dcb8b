"""Model inputs for validation, calibration and benchmarks: concrete shapes for symbolic
dims, seeded random values, NPZ files. Nothing here needs onnxruntime."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import onnx

from ..errors import GraphpruneError, first_line
from ..io.protos import graph_inputs, input_dtype

DEFAULT_DIM = 224  # for symbolic non-batch input dims when the user gives no shape
DEFAULT_LENGTH = 16  # the same for integer inputs (sequences of token ids)
MAX_RANDOM_BYTES = 2**30  # one random input (or batch) above this is a mistake, not a test


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


def check_given_shapes(model: onnx.ModelProto, given: dict[str, tuple[int, ...]]) -> None:
    """Refuse user-given shapes for no input, or of another rank than the input declares."""
    declared = {info.name: info.type.tensor_type for info in graph_inputs(model)}
    for name, shape in given.items():
        if name not in declared:
            raise GraphpruneError(
                f"--input-shape {name}: no such model input (inputs: {', '.join(declared)})"
            )
        rank = len(declared[name].shape.dim)
        if declared[name].HasField("shape") and rank != len(shape):
            raise GraphpruneError(
                f"--input-shape {name}: the input has {rank} dims, not {len(shape)}"
            )


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
    indices and flags for any table). Refused above MAX_RANDOM_BYTES (absurd dims)."""
    size = math.prod(shape) * max(dtype.itemsize, 8)  # floats are drawn as float64
    if size > MAX_RANDOM_BYTES:
        raise GraphpruneError(
            f"random inputs of shape {list(shape)} would take {size / 2**30:.3g} GiB; "
            "give smaller shapes (--input-shape) or --inputs"
        )
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    return rng.integers(0, 2, size=shape).astype(dtype)


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return read_npz(path, "inputs")


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """The arrays of an NPZ file, refused (one line) unless it is one and holds arrays of
    numbers or booleans."""
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an NPZ archive")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise GraphpruneError(f"cannot read {what} {path}: {first_line(error)}") from None
    if not arrays:
        raise GraphpruneError(f"cannot read {what} {path}: it holds no arrays")
    for name, value in arrays.items():
        if value.dtype.kind not in "biuf":
            raise GraphpruneError(
                f"{what} {path}: array '{name}' holds {value.dtype}, not numbers"
            )
        if value.size == 0:
            raise GraphpruneError(f"{what} {path}: array '{name}' is empty {value.shape}")
    return arrays
