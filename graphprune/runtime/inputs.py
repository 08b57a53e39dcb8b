"""Model inputs for validation, calibration and benchmarks: concrete shapes for symbolic
dims, seeded random values, NPZ files. Nothing here needs onnxruntime (`runtime.probe`
runs the model to choose among candidate shapes)."""

from __future__ import annotations

import math
import os
import zipfile
from collections import defaultdict

import numpy as np
import onnx

from ..errors import GraphpruneError, first_line
from ..io.external import to_array
from ..io.paths import readable_file, shown
from ..io.protos import graph_inputs, input_dtype, node_attribute

DEFAULT_DIM = 224  # for symbolic non-batch input dims when the user gives no shape
DEFAULT_LENGTH = 16  # the same for integer inputs (sequences of token ids)
# What to try, in order, when the original model does not run at the defaults: common
# image sizes (large first, so that statistics see realistic maps), and sequence lengths
# paired with them. Entry 0 is the default.
CANDIDATE_DIMS = (DEFAULT_DIM, 256, 320, 128, 64, 48, 32)
CANDIDATE_LENGTHS = (DEFAULT_LENGTH, 8, 32, 64, 128, 4, 2)

# Ops that pass integer indices through unchanged in value (ids keep their range).
_INDEX_PASSTHROUGH = frozenset(
    {"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand"}
)
MAX_RANDOM_BYTES = 2**30  # one random input (or batch) above this is a mistake, not a test


def input_shapes(
    model: onnx.ModelProto,
    given: dict[str, tuple[int, ...]] | None = None,
    batch: int = 1,
    candidate: int = 0,
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: given ones, else static dims with symbolic batch -> `batch`
    and other symbolic dims -> CANDIDATE_DIMS[candidate] (images) or, for integer
    inputs, CANDIDATE_LENGTHS[candidate] (token ids), at most the model's position-table
    rows. A dim name shared by several inputs gets one size (the first input's)."""
    limit = max_positions(model)
    named: dict[str, int] = {}
    shapes = {}
    for info in graph_inputs(model):
        if given and info.name in given:
            shapes[info.name] = tuple(given[info.name])
            continue
        default = CANDIDATE_DIMS[candidate]
        if np.issubdtype(input_dtype(info), np.integer):
            default = CANDIDATE_LENGTHS[candidate]
            default = min(default, limit) if limit else default
        dims = []
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:  # Paddle writes -1 for "any"
                dims.append(int(dim.dim_value))
            elif dim.dim_param:
                dims.append(named.setdefault(dim.dim_param, batch if axis == 0 else default))
            else:
                dims.append(batch if axis == 0 else default)
        shapes[info.name] = tuple(dims)
    return shapes


def candidate_shapes(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]] | None = None
) -> list[dict[str, tuple[int, ...]]]:
    """The shapes to try in order, the default first, without repeats (a model with no
    symbolic dims outside the batch has exactly one)."""
    found: list[dict[str, tuple[int, ...]]] = []
    for candidate in range(len(CANDIDATE_DIMS)):
        shapes = input_shapes(model, given, candidate=candidate)
        if shapes not in found:
            found.append(shapes)
    return found


def shapes_text(shapes: dict[str, tuple[int, ...]]) -> str:
    """x=1x3x224x224 y=1x16: how messages name a set of input shapes."""
    return " ".join(
        f"{name}={'x'.join(map(str, shape)) or 'scalar'}" for name, shape in shapes.items()
    )


def id_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """For each integer input used as Gather indices into a constant table (token ids into
    an embedding, possibly through a Cast or Reshape), the number of rows of the smallest
    such table: random ids below it are valid, and spread over the table."""
    consumers, constant_rows = _index_graph(model)
    found = {}
    for info in graph_inputs(model):
        if not np.issubdtype(input_dtype(info), np.integer):
            continue
        rows = [
            constant_rows[node.input[0]]
            for node in _index_uses(info.name, consumers)
            if node.input[0] in constant_rows and node_attribute(node, "axis", 0) == 0
        ]
        if rows:
            found[info.name] = min(rows)
    return found


def max_positions(model: onnx.ModelProto) -> int | None:
    """The rows of the smallest position-embedding table (a constant 2-D table gathered at
    positions: `arange(seq)`, a Range, or `position_ids[:, :seq]`, a Slice of an increasing
    constant): the longest sequence the model accepts, None when unknown."""
    _, constant_rows = _index_graph(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    stored = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # the classic exporter keeps buffers in Constant nodes
        stored.update((node.output[0], a.t) for a in node.attribute if a.name == "value")
    rows = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in constant_rows:
            continue
        source = producer.get(node.input[1])
        while source is not None and source.op_type in _INDEX_PASSTHROUGH:
            source = producer.get(source.input[0])
        if source is not None and _makes_positions(source, stored):
            rows.append(constant_rows[node.input[0]])
    return min(rows, default=None)


def _makes_positions(node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]) -> bool:
    """A Range, or a Slice of a stored increasing buffer (BERT's position_ids; its
    token_type_ids buffer is zeros, and its table's two rows are no length limit)."""
    if node.op_type == "Range":
        return True
    if node.op_type != "Slice" or node.input[0] not in stored:
        return False
    values = to_array(stored[node.input[0]]).ravel()
    return values.size > 1 and bool(np.all(np.diff(values) > 0))


def _index_graph(model: onnx.ModelProto):
    """Consumers by tensor name, and the row count of every constant 2-D table."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    rows = {t.name: int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 2}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and len(attribute.t.dims) == 2:
                    rows[node.output[0]] = int(attribute.t.dims[0])
    return consumers, rows


def _index_uses(name: str, consumers) -> list[onnx.NodeProto]:
    """The Gather nodes that read `name` as indices, directly or through value-preserving
    ops (not through arithmetic, which changes the range)."""
    found, stack, seen = [], [name], {name}
    while stack:
        tensor = stack.pop()
        for node in consumers.get(tensor, []):
            if node.op_type == "Gather" and node.input[1] == tensor:
                found.append(node)
            elif node.op_type in _INDEX_PASSTHROUGH and node.input[0] == tensor:
                for out in node.output[:1]:
                    if out not in seen:
                        seen.add(out)
                        stack.append(out)
    return found


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
    ranges = id_ranges(model)
    feeds = {}
    for info in model.graph.input:
        if info.name in shapes:
            high = ranges.get(info.name, 2)
            feeds[info.name] = random_array(rng, input_dtype(info), shapes[info.name], high)
    return feeds


def random_array(rng: np.random.Generator, dtype: np.dtype, shape, high: int = 2) -> np.ndarray:
    """Standard normal floats, all-true booleans, integers in [0, high): token ids within
    the embedding table (`id_ranges`), else {0, 1} (valid indices and flags anywhere).
    Refused above MAX_RANDOM_BYTES (absurd dims)."""
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
    return rng.integers(0, high, size=shape).astype(dtype)


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return read_npz(path, "inputs")


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """The arrays of an NPZ file, refused (one line) unless it is one and holds arrays of
    numbers or booleans."""
    readable_file(path, what)
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an NPZ archive")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: {first_line(error)}") from None
    if not arrays:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: it holds no arrays")
    for name, value in arrays.items():
        if value.dtype.kind not in "biuf":
            raise GraphpruneError(
                f"{what} {shown(path)}: array '{shown(name)}' holds {value.dtype}, not numbers"
            )
        if value.size == 0:
            raise GraphpruneError(
                f"{what} {shown(path)}: array '{shown(name)}' is empty {value.shape}"
            )
    return arrays
