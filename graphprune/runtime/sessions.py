"""onnxruntime sessions: imported on first use, quiet, on the CUDA execution provider
when it really runs (onnxruntime-gpu lists it on machines without a GPU and then falls
back), the CPU provider otherwise; reports say which ran."""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
from functools import cache

import numpy as np
import onnx

from ..errors import GraphpruneError, first_line
from ..io.external import data_length
from ..io.large import heavy, temporary_copy

_QUIET = 4  # onnxruntime severities: 0 verbose ... 3 error, 4 fatal; we report errors
# "[ONNXRuntimeError] : 1 : FAIL : " says nothing that the rest of its line does not.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
# A model can run for days (a Loop with a huge trip count): every run stops after this long.
DEFAULT_RUN_TIMEOUT_S = 300.0
_run_timeout_s = DEFAULT_RUN_TIMEOUT_S


def limit_runs(seconds: float) -> None:
    """Stop every later onnxruntime run after `seconds` with a one-line error."""
    global _run_timeout_s
    if not 0 < seconds < math.inf:
        raise GraphpruneError(f"the run time limit must be a positive number, got {seconds}")
    _run_timeout_s = seconds


@cache
def onnxruntime():
    """The onnxruntime module, imported on first use with its default logger quiet (its
    own error lines would repeat what graphprune reports in one line)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(_QUIET)
    return onnxruntime


@cache
def execution_provider() -> str:
    """CUDAExecutionProvider when a tiny model actually runs on it, else CPU."""
    ort = onnxruntime()
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
        ort.set_default_logger_severity(_QUIET)
    used = session.get_providers()
    return (
        "CUDAExecutionProvider"
        if used and used[0] == "CUDAExecutionProvider"
        else ("CPUExecutionProvider")
    )


# onnxruntime's CPU provider runs float16 and bfloat16 MatMuls through float32 casts of
# their weights, which it keeps next to the originals: a session peaks at about three
# times a half-precision model (measured on float16 LLaMAs: 2.3 GB for 0.77 GB, 5.0 GB
# for 1.6 GB, past 19 GB and growing for 9.7 GB). Other weights are held about once
# (3.3 GB for a 3.3 GB float32 LLaMA). A session that does not fit takes the machine's
# memory from everything else on it before it is killed, so the estimate errs high.
_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_HALF_FACTOR, _OTHER_FACTOR = 3.0, 1.25
_SESSION_OVERHEAD = 2**29


def session_bytes(model: onnx.ModelProto, provider: str) -> int:
    """About the memory an onnxruntime session of `model` holds on `provider`'s host."""
    total = _SESSION_OVERHEAD
    for tensor in model.graph.initializer:
        size = data_length(tensor)
        half = tensor.data_type in _HALF_TYPES and provider == "CPUExecutionProvider"
        total += int(size * (_HALF_FACTOR if half else _OTHER_FACTOR))
    return total


def available_bytes() -> int | None:
    """Memory the system can give without swapping (MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class SessionTooBig(GraphpruneError):
    """A session refused because it would not fit in the memory available."""


def too_big_to_run(model: onnx.ModelProto, provider: str | None = None) -> str | None:
    """Why an onnxruntime session of `model` would not fit in the available memory (a
    sentence), or None when it fits or the memory is unknown."""
    provider = provider or execution_provider()
    needed, available = session_bytes(model, provider), available_bytes()
    if available is None or needed <= available:
        return None
    return (
        f"an onnxruntime session of the model needs about {needed / 2**30:.1f} GB on "
        f"{provider}, and {available / 2**30:.1f} GB of memory are available"
    )


def session(model: onnx.ModelProto, provider: str | None = None, threads: int | None = None):
    """An onnxruntime session; `threads` fixes intra-op threads for timing (sequential,
    threads that sleep instead of spinning between runs).
    A model whose session would not fit in memory is refused in one line (onnxruntime
    would take the machine's memory, then be killed)."""
    ort = onnxruntime()
    provider = provider or execution_provider()
    reason = too_big_to_run(model, provider)
    if reason is not None:
        raise SessionTooBig(f"cannot run the model in onnxruntime: {reason}")
    providers = [provider]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Timed sessions run alternately: a session's threads spinning after its run take
        # the cores from the other's timed run (measured: the same pruned model at 0.32 and
        # 0.15 of the original's latency in one process; 0.49 and 0.52 without spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        if not heavy(model):
            serialized = model.SerializeToString()
            return ort.InferenceSession(serialized, options, providers=providers)
        # Past 2 GB onnxruntime takes the model only by path, its weights as external
        # data; from a few hundred megabytes on, that also costs a quarter of the memory.
        with temporary_copy(model) as path:
            return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:
        raise GraphpruneError(f"onnxruntime cannot load the model: {first_line(error)}") from None


def run(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return _timed_run(sess, feeds)
    except GraphpruneError:
        raise
    except Exception as error:
        raise GraphpruneError(f"onnxruntime failed to run the model: {first_line(error)}") from None


def try_run(sess, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str | None]:
    """The outputs and None, or no outputs and the first line of onnxruntime's error: for
    probes, where failing is an answer (which inputs or batch sizes the model accepts)."""
    try:
        return _timed_run(sess, feeds), None
    except GraphpruneError:
        raise
    except Exception as error:  # any failure to run is the model's answer to these inputs
        return [], _ORT_PREFIX.sub("", first_line(error))


def run_bound(sess, binding) -> None:
    """Run with an onnxruntime IO binding (inputs and outputs where it bound them),
    synchronised before and after so that the call returns with the outputs ready."""
    try:
        binding.synchronize_inputs()
        _limited(lambda options: sess.run_with_iobinding(binding, options))
        binding.synchronize_outputs()
    except GraphpruneError:
        raise
    except Exception as error:
        raise GraphpruneError(f"onnxruntime failed to run the model: {first_line(error)}") from None


def _timed_run(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with exactly the model's inputs fed, stopped after the time limit."""
    names = {i.name for i in sess.get_inputs()}
    missing = names - set(feeds)
    if missing:
        raise GraphpruneError(f"inputs missing from the feed: {', '.join(sorted(missing))}")
    unknown = set(feeds) - names
    if unknown:
        raise GraphpruneError(f"inputs that the model does not have: {', '.join(sorted(unknown))}")
    return _limited(lambda options: sess.run(None, feeds, options))


def _limited(call):
    """`call(run_options)`, terminated after the time limit with a one-line error."""
    limit = _run_timeout_s
    options = onnxruntime().RunOptions()
    timer = threading.Timer(limit, setattr, (options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return call(options)
    except Exception:
        if options.terminate:
            message = f"onnxruntime ran past the {limit:g} s limit (--run-timeout)"
            raise GraphpruneError(message) from None
        raise
    finally:
        timer.cancel()
