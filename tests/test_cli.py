"""The command line as a deployment pipeline uses it: reports, plans, exit codes, errors
in one line, untouched inputs, atomic and reproducible outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune as gp
from graphprune import __version__
from graphprune.cli import main
from graphprune.runtime.inputs import DEFAULT_DIM, input_shapes

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prune(tmp_path: Path, *extra: str, name: str = "out.onnx") -> tuple[int, Path]:
    out = tmp_path / name
    code = main(["prune", str(EXAMPLE), "-o", str(out), "--quiet", *extra])
    return code, out


def test_prune_writes_model_and_report(tmp_path, capsys):
    before = digest(EXAMPLE)
    code, out = prune(tmp_path, "--ratio", "0.5", "--report", str(tmp_path / "r.json"))
    assert code == 0
    assert digest(EXAMPLE) == before
    onnx.checker.check_model(onnx.load(out), full_check=True)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["validation"]["execution_provider"] in (
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    )
    pruned = [g for g in report["groups"] if g["removed"]]
    assert pruned and all(len(g["kept"]) + len(g["removed"]) == g["channels"] for g in pruned)
    assert "params" in capsys.readouterr().out


def test_same_inputs_give_byte_identical_models(tmp_path):
    _, first = prune(tmp_path, "--ratio", "0.4", "--global", name="a.onnx")
    _, second = prune(tmp_path, "--ratio", "0.4", "--global", name="b.onnx")
    assert first.read_bytes() == second.read_bytes()


def test_plan_reapplies_the_exact_channels(tmp_path):
    report = tmp_path / "r.json"
    _, first = prune(
        tmp_path, "--ratio", "0.5", "--criterion", "l1", "--report", str(report), name="a.onnx"
    )
    code, second = prune(tmp_path, "--plan", str(report), name="b.onnx")
    assert code == 0
    assert first.read_bytes() == second.read_bytes()


def test_round_to_and_ignore(tmp_path):
    report = tmp_path / "r.json"
    code, _ = prune(
        tmp_path,
        "--ratio",
        "0.3",
        "--round-to",
        "8",
        "--ignore",
        "/stem/*",
        "--report",
        str(report),
    )
    assert code == 0
    groups = json.loads(report.read_text())["groups"]
    assert all(len(g["kept"]) % 8 == 0 for g in groups if g["removed"])
    assert not groups[0]["removed"]  # the stem group is ignored


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratio", "1.0"], "ratio must be in [0, 1)"),
        (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
        (["--ratio", "0.5", "--ignore", "no_such_node"], "matches no node or initializer"),
        ([], "give --ratio"),
        (["--ratio", "0.5", "--inputs", "missing.npz"], "cannot read --inputs missing.npz"),
    ],
)
def test_bad_options_fail_cleanly(tmp_path, capsys, args, message):
    code, out = prune(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_models_fail_cleanly(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    external = tmp_path / "external.onnx"
    model = onnx.load(EXAMPLE)
    onnx.save_model(
        model, external, save_as_external_data=True, location="external.data", size_threshold=0
    )
    (tmp_path / "external.data").unlink()
    for path, message in (
        (tmp_path / "nope.onnx", "no such file"),
        (corrupt, "not a valid ONNX model"),
        (external, "missing external data"),
    ):
        code = main(["analyze", str(path)])
        err = capsys.readouterr().err
        assert code == 1, path
        assert message in err and len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_the_input(tmp_path, capsys):
    copy = tmp_path / "m.onnx"
    shutil.copy(EXAMPLE, copy)
    assert main(["prune", str(copy), "-o", str(copy), "--ratio", "0.5", "--quiet"]) == 1
    assert digest(copy) == digest(EXAMPLE)


def test_external_data_models_load_and_prune(tmp_path):
    external = tmp_path / "external.onnx"
    onnx.save_model(
        onnx.load(EXAMPLE),
        external,
        save_as_external_data=True,
        location="external.data",
        size_threshold=0,
    )
    out = tmp_path / "out.onnx"
    assert main(["prune", str(external), "-o", str(out), "--ratio", "0.5", "--quiet"]) == 0
    assert out.stat().st_size < EXAMPLE.stat().st_size


def test_analyze_json(capsys):
    assert main(["analyze", str(EXAMPLE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups"] == len(data["group_list"]) and data["prunable_groups"] >= 1
    kept = [g for g in data["group_list"] if not g["prunable"]]
    assert all(g["reasons"] for g in kept)


def test_console_script_version_and_bench(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "graphprune.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"graphprune {__version__}"
    report = tmp_path / "r.json"
    code, _ = prune(tmp_path, "--ratio", "0.5", "--bench", "--report", str(report))
    bench = json.loads(report.read_text())["bench"]
    assert code == 0 and bench["latency_ms_before"] > 0 and bench["latency_ms_after"] > 0



def test_shape_inference_leaves_no_files(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference, when it cannot finish (here: a custom op on
    a symbolic batch), saves `sym_shape_infer_temp.onnx` into the working directory; the
    analysis must leave the user's folder as it was."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        onnx.helper.make_node("Foo", ["h"], ["f"], name="foo", domain="custom.ops"),
        onnx.helper.make_node("Relu", ["f"], ["y"], name="relu"),
    ]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", [x], [y], [weight]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("custom.ops", 1)],
    )
    monkeypatch.chdir(tmp_path)
    analysis = gp.analyze(gp.load(model))
    assert [str(r) for g in analysis.groups for r in g.reasons] == [
        "Foo 'foo': no channel rule for op custom.ops.Foo"
    ]
    assert list(tmp_path.iterdir()) == []


def test_inputs_declared_with_negative_dims_get_default_sizes():
    """Paddle exports declare free dims as -1: they are symbolic, not sizes."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, -1, -1])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        )
    )  # fmt: skip
    assert input_shapes(model) == {"x": (1, 3, DEFAULT_DIM, DEFAULT_DIM)}
