"""Turn (entry, variant) into an ONNX file in the corpus cache, or a recorded ExportFailed.

The cache is `$GRAPHPRUNE_CORPUS_CACHE` or `~/.cache/graphprune-corpus`, one file per
(entry, variant) under the torch version and `CORPUS_VERSION` (bump it when a builder
changes). A failed export is cached too (`.failed`, holding the reason), so a rerun does not
pay for it again; delete the file to retry.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from .registry import VARIANTS, Built, Entry, ExportFailed, Variant

CACHE_ENV = "GRAPHPRUNE_CORPUS_CACHE"
CORPUS_VERSION = "v1"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graphprune-corpus"


def model_path(entry: Entry, variant: str) -> Path:
    import torch

    folder = cache_root() / f"torch-{torch.__version__}-{CORPUS_VERSION}"
    return folder / f"{entry.name.replace('/', '.')}.{variant}.onnx"


def materialize(entry: Entry, variant: str) -> Path:
    """The ONNX file of `entry` in `variant`, exported now if missing; ExportFailed if it
    cannot be (now or in an earlier run)."""
    if entry.thirdparty is not None:
        return _thirdparty(entry.thirdparty)
    if entry.file is not None and variant == "file":
        return Path(entry.file)
    path = model_path(entry, variant)
    failed = path.with_suffix(".failed")
    if path.is_file():
        return path
    if failed.is_file():
        raise ExportFailed(failed.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proto = _resave(entry, variant) if entry.file else export(entry, VARIANTS[variant])
    except ExportFailed as error:
        failed.write_text(str(error))
        raise
    except Exception as error:  # any exporter or builder error is the export's failure
        reason = f"{type(error).__name__}: {_first_line(error)}"
        failed.write_text(reason)
        raise ExportFailed(reason) from error
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(proto, str(staging))
    os.replace(staging, path)
    return path


def _thirdparty(name: str) -> Path:
    import thirdparty  # tools/ is on sys.path in every caller

    os.environ.setdefault(thirdparty.CACHE_ENV, str(cache_root() / "thirdparty"))
    try:
        return thirdparty.fetch(name)
    except thirdparty.ThirdPartyError as error:
        raise ExportFailed(f"cannot fetch: {error}") from error


def _resave(entry: Entry, variant: str) -> onnx.ModelProto:
    from .files import variant_of

    return variant_of(onnx.load(str(entry.file)), variant)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def export(entry: Entry, variant: Variant) -> onnx.ModelProto:
    """Build the torch model, export it, apply the variant's post-processing."""
    from models.export import normalize

    assert entry.build is not None
    built = entry.build()
    if variant.post == "ortopt" and built.ort_type is None:
        raise ExportFailed("no onnxruntime optimizer model type for this family")
    proto = normalize(_export_any(built, variant))
    if variant.post == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=False)
    elif variant.post == "onnxsim":
        proto = _simplify(proto)
    elif variant.post == "dynquant":
        proto = _quantize_dynamic(proto)
    elif variant.post == "ortopt":
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            proto, model_type=built.ort_type, num_heads=built.heads, hidden_size=built.hidden
        )
        proto = optimized.model
    return proto


def _export_any(built: Built, variant: Variant) -> onnx.ModelProto:
    """The variant's export; else at the larger input size (vision); else, for the post-
    processed variants, with the dynamo exporter (the classic one cannot export decoder
    LMs with transformers 5), so that fp16/onnxsim/ortopt still get a model."""
    try:
        return _torch_export(built, variant)
    except Exception:
        if built.larger is not None:
            return _torch_export(built.larger(), variant)
        if variant.post is None or variant.exporter != "classic":
            raise
        return _torch_export(built, replace(variant, exporter="dynamo", opset=18))


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxsim
    except ImportError as error:
        raise ExportFailed("onnxsim is not installed") from error
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise ExportFailed("onnxsim could not validate its simplified model")
    return simplified


def _quantize_dynamic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's `quantize_dynamic` (its defaults: per-tensor int8 weights). Its shape
    inference refuses some of the dynamo exporter's value_info (a MatMul's recorded
    shape), which is only a hint, so that goes first."""
    import tempfile

    from onnxruntime.quantization import quantize_dynamic

    del proto.graph.value_info[:]
    with tempfile.TemporaryDirectory() as folder:
        source, quantized = Path(folder) / "float.onnx", Path(folder) / "dynamic.onnx"
        onnx.save(proto, str(source))
        quantize_dynamic(str(source), str(quantized))
        return onnx.load(str(quantized))


def _torch_export(built: Built, variant: Variant) -> onnx.ModelProto:
    import torch

    # The dynamo exporter logs every torchvision op it has no translation for.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    dynamic = built.dynamic if variant.dynamic else {}
    # nn.MultiheadAttention's fused eval fast path has no classic export (torchvision ViT).
    torch.backends.mha.set_fastpath_enabled(variant.exporter != "classic")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant.exporter == "dynamo":
            shapes = _dynamic_shapes(built, dynamic)
            program = torch.onnx.export(
                built.module,
                built.inputs,
                dynamo=True,
                opset_version=variant.opset,
                external_data=False,
                input_names=list(built.input_names),
                dynamic_shapes=shapes,
                verbose=False,
            )
            if program is None:
                raise ExportFailed("the dynamo exporter returned no program")
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            built.module,
            built.inputs,
            buffer,
            dynamo=False,
            opset_version=variant.opset,
            input_names=list(built.input_names),
            dynamic_axes=dynamic or None,
            do_constant_folding=True,
        )
        return onnx.load_from_string(buffer.getvalue())


def _dynamic_shapes(built: Built, dynamic: dict[str, dict[int, str]]) -> Any:
    if not dynamic:
        return None
    from torch.export import Dim

    return tuple(
        {axis: Dim.DYNAMIC for axis in dynamic.get(name, {})} for name in built.input_names
    )
