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


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_is_byte_identical(exporter: str, tmp_path: Path) -> None:
    first = export("resnet_tiny", exporter, tmp_path / "a.onnx").read_bytes()
    assert first == cached("resnet_tiny", exporter).read_bytes()
    assert first == export("resnet_tiny", exporter, tmp_path / "b.onnx").read_bytes()


def test_readme_example_is_current() -> None:
    example = REPO / "models" / "example" / "resnet_tiny.onnx"
    assert example.stat().st_size < 1_000_000
    assert example.read_bytes() == cached("resnet_tiny", "classic").read_bytes(), (
        "regenerate: python -m models.export resnet_tiny --exporter classic --out models/example"
    )
