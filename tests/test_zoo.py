"""The reference zoo exports with both torch exporters, validates, and matches torch numerically.

Exports come from ``models.export.cached`` (first run exports, later runs reuse the cache in
``$GRAPHPRUNE_ZOO_CACHE`` or ``models/.cache/<torch version>/``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``models`` is not an installed package
    sys.path.insert(0, str(REPO))

from models.export import EXPORTERS, cached, export  # noqa: E402
from models.zoo import ZOO, build, example_input  # noqa: E402

RTOL = 1e-4


@functools.cache
def torch_reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of the seeded torch model, computed once per model for both exporters."""
    x = example_input(name)
    with torch.no_grad():
        y = build(name)(x)
    return x.numpy(), y.numpy()


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(ZOO))
def test_export_is_valid_and_matches_torch(name: str, exporter: str) -> None:
    path = cached(name, exporter)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    x, expected = torch_reference(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert tuple(graph_input.shape) == ZOO[name].input_shape
    (actual,) = session.run(None, {graph_input.name: x})

    assert actual.shape == expected.shape
    # Relative to the output's scale: elementwise rtol alone fails on outputs near zero.
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


def differences(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-5) -> list[str]:
    """What differs between two exports of one model: the graph exactly (ops, names,
    attributes, wiring, input/output types and shapes, weight names, dtypes and dims), the
    weights within `rtol` of their scale. Float results of an export (BatchNorm folding,
    initialisation) may differ in the last bit between CPUs, so weights are not compared
    bytewise."""
    found = []

    def graph_of(model: onnx.ModelProto) -> onnx.GraphProto:
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        del graph.initializer[:]
        return graph

    if graph_of(a).SerializeToString(deterministic=True) != graph_of(b).SerializeToString(
        deterministic=True
    ):
        found.append("the graphs differ (nodes, attributes, inputs or outputs)")
    if list(a.opset_import) != list(b.opset_import) or a.ir_version != b.ir_version:
        found.append("opset or IR version differs")
    weights_a = {t.name: t for t in a.graph.initializer}
    weights_b = {t.name: t for t in b.graph.initializer}
    if list(weights_a) != list(weights_b):
        found.append("initializer names differ")
    for name in weights_a.keys() & weights_b.keys():
        x, y = weights_a[name], weights_b[name]
        if (x.data_type, list(x.dims)) != (y.data_type, list(y.dims)):
            found.append(f"initializer {name}: type or dims differ")
            continue
        u, v = numpy_helper.to_array(x), numpy_helper.to_array(y)
        if not np.issubdtype(u.dtype, np.floating):
            if not np.array_equal(u, v):
                found.append(f"initializer {name}: values differ")
        elif not np.allclose(u, v, rtol=rtol, atol=rtol * float(np.abs(u).max(initial=0))):
            found.append(f"initializer {name}: values differ beyond rtol {rtol}")
    return found


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_is_reproducible(exporter: str, tmp_path: Path) -> None:
    """Two exports in one process are byte-identical (the cache relies on it); the cached
    one, possibly written on another machine, is the same model up to float rounding."""
    first = export("resnet_tiny", exporter, tmp_path / "a.onnx")
    assert first.read_bytes() == export("resnet_tiny", exporter, tmp_path / "b.onnx").read_bytes()
    assert differences(onnx.load(str(first)), onnx.load(str(cached("resnet_tiny", exporter)))) == []


def test_readme_example_is_current() -> None:
    example = REPO / "models" / "example" / "resnet_tiny.onnx"
    assert example.stat().st_size < 1_000_000
    found = differences(onnx.load(str(example)), onnx.load(str(cached("resnet_tiny", "classic"))))
    assert found == [], (
        f"{found[:3]}; regenerate: python -m models.export resnet_tiny --exporter classic "
        "--out models/example"
    )


def test_differences_tolerate_float_rounding_and_catch_structure() -> None:
    """The example check passes for weights one ulp away (another CPU's export) and fails
    for a changed op, attribute, shape or weight."""
    example = onnx.load(str(REPO / "models" / "example" / "resnet_tiny.onnx"))

    def changed(edit) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(example)
        edit(model)
        return model

    def one_ulp(model: onnx.ModelProto) -> None:
        for tensor in model.graph.initializer:
            value = numpy_helper.to_array(tensor)
            if np.issubdtype(value.dtype, np.floating):
                tensor.CopyFrom(numpy_helper.from_array(np.nextafter(value, np.inf), tensor.name))

    def op(model: onnx.ModelProto) -> None:
        next(n for n in model.graph.node if n.op_type == "Relu").op_type = "Sigmoid"

    def attribute(model: onnx.ModelProto) -> None:
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        conv.attribute.append(onnx.helper.make_attribute("group", 2))

    def shape(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value += 1

    def weight(model: onnx.ModelProto) -> None:
        tensor = next(t for t in model.graph.initializer if len(t.dims) == 4)
        value = numpy_helper.to_array(tensor).copy()
        value.flat[0] += 0.01 * float(np.abs(value).max())
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))

    assert differences(example, changed(one_ulp)) == []
    for edit in (op, attribute, shape, weight):
        assert differences(example, changed(edit)), edit.__name__
