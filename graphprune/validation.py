"""Running models in onnxruntime: provider choice, inputs, output comparison, latency.

The CUDA provider is used when it really runs (onnxruntime-gpu lists it on machines
without a GPU and then falls back), the CPU provider otherwise; reports say which ran.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import onnx

from .errors import GraphpruneError

os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
import onnxruntime as ort

ort.set_default_logger_severity(3)

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}  # fmt: skip
DEFAULT_DIM = 224  # for symbolic non-batch input dims when the user gives no shape
DEFAULT_LENGTH = 16  # the same for integer inputs (sequences of token ids)


@cache
def execution_provider() -> str:
    """CUDAExecutionProvider when a tiny model actually runs on it, else CPU."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "CPUExecutionProvider"
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* pip packages
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                ort.preload_dlls()
        except Exception:  # missing libraries only mean CUDA will not work
            pass
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    probe.ir_version = 7  # any onnxruntime reads it, whatever onnx version wrote it
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)  # a failing CUDA library load is expected here
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CUDAExecutionProvider"]
        )
        session.run(None, {"x": np.ones(1, np.float32)})
    except Exception:  # any failure means CUDA is not usable here
        return "CPUExecutionProvider"
    finally:
        ort.set_default_logger_severity(3)
    used = session.get_providers()
    return (
        "CUDAExecutionProvider"
        if used and used[0] == "CUDAExecutionProvider"
        else ("CPUExecutionProvider")
    )


def session(
    model: onnx.ModelProto, provider: str | None = None, threads: int | None = None
) -> ort.InferenceSession:
    """An onnxruntime session; `threads` fixes intra-op threads (benchmarks), sequential."""
    provider = provider or execution_provider()
    providers = [provider]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        if model.ByteSize() < 2**31 - 2**20:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
            return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:
        raise GraphpruneError(f"onnxruntime cannot load the model: {_first_line(error)}") from None


def input_shapes(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]] | None = None, batch: int = 1
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: given ones, else static dims with symbolic batch -> `batch`
    and other symbolic dims -> DEFAULT_DIM (images), or DEFAULT_LENGTH for integer inputs
    (token ids: a short sequence fits any position table)."""
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        if given and info.name in given:
            shapes[info.name] = tuple(given[info.name])
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        default = DEFAULT_LENGTH if np.issubdtype(dtype, np.integer) else DEFAULT_DIM
        dims = []
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
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
        if info.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        shape = shapes[info.name]
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = np.ones(shape, dtype=bool)
        else:
            feeds[info.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise GraphpruneError(f"cannot read inputs {path}: {_first_line(error)}") from None


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    missing = names - set(feeds)
    if missing:
        raise GraphpruneError(f"inputs missing from the feed: {', '.join(sorted(missing))}")
    try:
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as error:
        raise GraphpruneError(
            f"onnxruntime failed to run the model: {_first_line(error)}"
        ) from None


def compare(
    original: onnx.ModelProto, pruned: onnx.ModelProto, feeds, shapes_may_change: bool = False
) -> dict:
    """Run both models on the same inputs; raise if the pruned outputs change shape, unless
    the user asked to prune output channels (then the deviation is not defined: None)."""
    provider = execution_provider()
    base_session, pruned_session = session(original, provider), session(pruned, provider)
    expected, actual = run(base_session, feeds), run(pruned_session, feeds)
    outputs = []
    for meta, a, b in zip(base_session.get_outputs(), expected, actual, strict=True):
        if a.shape == b.shape:
            outputs.append({"name": meta.name, "shape": list(a.shape), **deviation(a, b)})
        elif shapes_may_change and a.ndim == b.ndim:
            outputs.append(
                {
                    "name": meta.name,
                    "shape_before": list(a.shape),
                    "shape": list(b.shape),
                    "max_abs": None,
                    "max_rel": None,
                }
            )
        else:
            raise GraphpruneError(
                f"output '{meta.name}' changed shape {list(a.shape)} -> {list(b.shape)}"
            )
    return {"execution_provider": provider, "outputs": outputs}


def deviation(expected: np.ndarray, actual: np.ndarray) -> dict:
    if not np.issubdtype(expected.dtype, np.number):
        return {"max_abs": float(np.any(expected != actual)), "max_rel": 0.0}
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}


def bench(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds,
    repeats: int = 30,
    provider: str | None = None,
    threads: int | None = None,
    warmup: int = 3,
) -> dict:
    """Median latency (ms) of both models, timed alternately in one process (the order
    swapped every repeat) so that both see the same machine state."""
    provider = provider or execution_provider()
    sessions = [session(original, provider, threads), session(pruned, provider, threads)]
    for s in sessions:
        for _ in range(warmup):
            run(s, feeds)
    times: list[list[float]] = [[], []]
    for repeat in range(repeats):
        for which in (0, 1) if repeat % 2 == 0 else (1, 0):
            start = time.perf_counter()
            run(sessions[which], feeds)
            times[which].append((time.perf_counter() - start) * 1000)
    before, after = statistics.median(times[0]), statistics.median(times[1])
    return {
        "execution_provider": provider,
        "repeats": repeats,
        "threads": threads,
        "latency_ms_before": round(before, 4),
        "latency_ms_after": round(after, 4),
        "speedup": round(before / after, 4) if after > 0 else None,
    }


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
