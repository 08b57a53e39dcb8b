"""ONNX files as corpus entries, and the variants re-saved from a file.

The `modelzoo` source: the classic ONNX model zoo graphs (AlexNet, DenseNet-121,
Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512; Caffe2 converts,
IR 3, opset 9) that the onnx wheel ships as backend test data
(`onnx/backend/test/data/light/`): nothing to download. Their weights are built at run
time by ConstantOfShape from shape initializers that are also graph inputs, and every
one is the constant 0.02: every channel of a layer equals every other, so a wrong slice
computes what the right one does. The variants made here start from a copy whose weights
are distinct (`randomized`), except "file", the file as shipped.

Variants of a file (`FILE_VARIANTS`):
- file: as shipped;
- file-random: the weights the file builds at run time from a constant (ConstantOfShape
  of a constant shape) become seeded random initializers (listed as inputs, as IR 3
  requires): of rank 2 or more (Conv, Gemm) zero-mean normal with variance 2 / fan-in
  (He), so that activations keep their scale through 16 layers without normalization;
  vectors (biases, batch-norm statistics and scales) uniform(0.5, 1.5), positive as
  variances must be. Initializers the file holds keep their values. A final Softmax
  that makes a graph output becomes an Identity (`logits`): a softmax over 1000 classes
  shrinks the effect of a wrong channel to about the oracle's tolerance, where the
  logits show it whole;
- file-fp16: file-random in float16 (onnxruntime's converter, inputs and outputs too);
- file-op13: file-random converted to opset 13 (onnx's version converter) at the IR
  version that opset needs (7): the weights stay graph inputs, overridable defaults now;
- file-ortopt: file-random after onnxruntime's basic graph optimizations (constant
  folding, Conv+BatchNormalization fusion, redundant nodes), saved by onnxruntime.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .registry import Entry, ExportFailed

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FILE_VARIANTS = ("file", "file-random", "file-fp16", "file-op13", "file-ortopt")
_OPSET = 13


def modelzoo_entries() -> list[Entry]:
    return [
        Entry(f"modelzoo/{name}", "modelzoo", name, FILE_VARIANTS, file=str(path))
        for path in sorted(LIGHT.glob("light_*.onnx"))
        for name in [path.stem.removeprefix("light_")]
    ]


def variant_of(model: onnx.ModelProto, variant: str) -> onnx.ModelProto:
    """The `variant` of the file's model (not "file": that is the file itself)."""
    randomized_model = logits(randomized(model))
    if variant == "file-random":
        return randomized_model
    if variant == "file-fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(randomized_model, keep_io_types=False)
    if variant == "file-op13":
        return _upgraded(randomized_model)
    if variant == "file-ortopt":
        return _ort_optimized(randomized_model)
    raise ExportFailed(f"no file variant {variant!r}")


def randomized(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where each float ConstantOfShape of a constant shape is a seeded random
    initializer (see the module; seeded by the tensor's name); shape initializers that
    only it read go with their graph inputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    stored = {t.name: t for t in graph.initializer}
    made: list[onnx.TensorProto] = []
    kept = []
    for node in graph.node:
        value = _constant_of_shape(node, stored)
        if value is None:
            kept.append(node)
            continue
        made.append(_random(node.output[0], value.shape, value.dtype))
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unread = {t.name for t in graph.initializer if t.name not in read}
    tensors = [t for t in graph.initializer if t.name not in unread] + made
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    inputs = [info for info in graph.input if info.name not in unread]
    if copy.ir_version < 4:  # every initializer is an input there
        inputs += [
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in made
        ]
    del graph.input[:]
    graph.input.extend(inputs)
    return copy


def logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where each Softmax that makes a graph output is an Identity (same names)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    outputs = {info.name for info in copy.graph.output}
    for node in copy.graph.node:
        if node.op_type == "Softmax" and node.output[0] in outputs:
            node.op_type = "Identity"
            del node.attribute[:]
    return copy


def _constant_of_shape(node: onnx.NodeProto, stored) -> np.ndarray | None:
    """The value of a float ConstantOfShape of an initializer's shape (None otherwise)."""
    if node.op_type != "ConstantOfShape" or node.input[0] not in stored:
        return None
    shape = numpy_helper.to_array(stored[node.input[0]]).astype(np.int64)
    fill = np.zeros(1, np.float32)
    for attribute in node.attribute:
        if attribute.name == "value":
            fill = numpy_helper.to_array(attribute.t).reshape(-1)
    if fill.dtype.kind != "f":
        return None
    return np.full(tuple(int(d) for d in shape), fill[0], dtype=fill.dtype)


def _random(name: str, shape: tuple[int, ...], dtype: np.dtype) -> onnx.TensorProto:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if len(shape) >= 2:
        fan_in = max(1, int(np.prod(shape[1:])))
        value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
    else:
        value = rng.uniform(0.5, 1.5, size=shape)
    return numpy_helper.from_array(value.astype(dtype), name)


def _upgraded(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx import version_converter

    converted = version_converter.convert_version(model, _OPSET)
    converted.ir_version = onnx.helper.find_min_ir_version_for(list(converted.opset_import))
    return converted


def _ort_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="corpus-ortopt-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return onnx.load(options.optimized_model_filepath)
