"""The interface contract (issue 18): a pruned model is called as its original is (the same
required inputs and outputs, versions kept, defaults that agree with their initializers),
checked by validation itself; folding keeps it; and every written model passes the checks
its input passes, on the bytes written, or nothing is written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.io.checks import check_level, check_model
from graphprune.io.interface import call_problem, interface_of, interface_problem
from graphprune.io.saving import save_model
from graphprune.runtime.sessions import run, session
from graphprune.runtime.validation import compare, skipped

FLOAT = TensorProto.FLOAT


def _weight(rng, name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def conv_net(*, x=(1, 3, 8, 8), y=(1, 4, 8, 8), outputs=(), w2=(4, 8, 3, 3), ir=8,
             defaults=False) -> onnx.ModelProto:  # fmt: skip
    """Conv-Relu-Conv, x -> y; `defaults` lists the weights as graph inputs too (as
    IR < 4 must, and old exporters did at any version)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    weights = [_weight(rng, "w1", 8, 3, 3, 3), _weight(rng, "b1", 8), _weight(rng, "w2", *w2)]
    inputs = [helper.make_tensor_value_info("x", FLOAT, x)]
    if defaults:
        inputs += [helper.make_tensor_value_info(t.name, FLOAT, list(t.dims)) for t in weights]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", FLOAT, y), *outputs], weights
    )
    opset = 9 if ir < 4 else 13
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir)  # fmt: skip


def caffe2_net() -> onnx.ModelProto:
    """As the Caffe2 converts of the classic model zoo are (IR 3, opset 9): each weight is a
    ConstantOfShape of a shape initializer that is also a graph input."""
    shapes = {"w1": [8, 3, 3, 3], "b1": [8], "w2": [4, 8, 3, 3]}
    fill = helper.make_tensor("v", FLOAT, [1], [0.02])
    nodes = [
        helper.make_node("ConstantOfShape", [f"{n}__SHAPE"], [n], f"make_{n}", value=fill)
        for n in shapes
    ]
    nodes += conv_net().graph.node
    shape_tensors = [
        numpy_helper.from_array(np.array(s, np.int64), f"{n}__SHAPE") for n, s in shapes.items()
    ]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.INT64, list(t.dims))
               for t in shape_tensors]  # fmt: skip
    graph = helper.make_graph(nodes, "caffe2", inputs,
                              [helper.make_tensor_value_info("y", FLOAT, [1, 4, 8, 8])],
                              shape_tensors)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {p.name: rng.standard_normal(p.dims).astype(np.float32)
            for p in interface_of(model).required}  # fmt: skip


def _ort_inputs(model: onnx.ModelProto) -> list[tuple[str, str, list]]:
    return [(i.name, i.type, list(i.shape)) for i in session(model).get_inputs()]


# The contract, read and compared


def test_interface_separates_required_inputs_defaults_and_outputs():
    found = interface_of(conv_net(x=("N", 3, 8, 8), defaults=True))
    assert [p.name for p in found.required] == ["x"]
    assert found.required[0].dims == ("N", 3, 8, 8)
    assert [p.name for p in found.defaults] == ["w1", "b1", "w2"]
    assert [p.name for p in found.outputs] == ["y"] and found.ir_version == 8


def _with_input(model, info):
    model.graph.input.append(info)


def _retype_output(model):
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE


def _stale_default(model):
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 99


def _fix_symbol(model):
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: _with_input(m, helper.make_tensor_value_info("w1__SHAPE", 7, [4])),
         "requires input 'w1__SHAPE'"),
        (lambda m: m.graph.input.pop(0), "does not take the original's input 'x'"),
        (_fix_symbol, "input 'x' is float[1,3,8,8] in the pruned model, float[N,3,8,8]"),
        (_retype_output, "output 'y' is double[1,4,8,8]"),
        (_stale_default, "input 'w1' is declared float[99,3,3,3] but its initializer is"),
        (lambda m: setattr(m, "ir_version", 7), "IR version 7, not 8"),
        (lambda m: m.graph.output.add().CopyFrom(m.graph.input[0]), "has an output 'x'"),
    ],
)  # fmt: skip
def test_each_break_of_the_contract_is_named_in_one_line(edit, expected):
    original = conv_net(x=("N", 3, 8, 8), defaults=True)
    changed = onnx.ModelProto()
    changed.CopyFrom(original)
    edit(changed)
    problem = interface_problem(interface_of(original), changed)
    assert problem is not None and expected in problem and "\n" not in problem
    assert interface_problem(interface_of(original), original) is None


def test_pruned_outputs_may_change_static_dims_only_when_asked():
    original, pruned = conv_net(y=("N", 4, 8, 8)), conv_net(y=("N", 3, 8, 8))
    assert "output 'y'" in interface_problem(interface_of(original), pruned)
    assert interface_problem(interface_of(original), pruned, outputs_may_shrink=True) is None
    renamed = conv_net(y=("M", 3, 8, 8))  # a symbol stays the same symbol
    assert interface_problem(interface_of(original), renamed, outputs_may_shrink=True)


def test_an_initializer_ir3_does_not_list_as_input_breaks_it():
    original = conv_net(ir=3, defaults=True)
    changed = onnx.ModelProto()
    changed.CopyFrom(original)
    del changed.graph.input[3]
    assert "initializer 'w2' is not a graph input" in interface_problem(
        interface_of(original), changed
    )


# Folding keeps how the model is called


def test_folding_keeps_the_required_inputs_of_a_caffe2_convert():
    raw = caffe2_net()
    loaded = gp.load(raw)
    assert interface_of(loaded).required == interface_of(raw).required
    assert call_problem(interface_of(raw), interface_of(loaded)) is None
    # The shape inputs left with their initializers; the folded weights are listed as
    # inputs (IR 3 needs it), and the model passes the full checker as the input does.
    names = [info.name for info in loaded.graph.input]
    assert not any(name.endswith("__SHAPE") for name in names)
    assert {t.name for t in loaded.graph.initializer} <= set(names)
    assert check_level(raw) == check_level(loaded) == "full"
    assert _ort_inputs(loaded) == _ort_inputs(raw)


def test_folding_postcondition_names_a_new_required_input():
    before = interface_of(caffe2_net())
    broken = caffe2_net()
    del broken.graph.initializer[0]  # its graph input stays: now the caller must feed it
    assert "requires input 'w1__SHAPE'" in call_problem(before, interface_of(broken))


# Validation checks the contract


def test_validation_fails_on_a_model_that_requires_an_input_the_original_does_not():
    original = gp.load(caffe2_net())
    pruned = onnx.ModelProto()
    pruned.CopyFrom(original)
    # The symptom of the issue: a shape input whose initializer folding dropped.
    pruned.graph.input.append(helper.make_tensor_value_info("w1__SHAPE", TensorProto.INT64, [4]))
    feeds = _feeds(original)
    with pytest.raises(GraphpruneError, match="requires input 'w1__SHAPE'"):
        compare(original, pruned, feeds, interface=interface_of(caffe2_net()))
    with pytest.raises(GraphpruneError, match="requires input 'w1__SHAPE'"):
        skipped("CPUExecutionProvider", "--no-validate", interface=interface_of(original),
                pruned=pruned)  # fmt: skip
    assert compare(original, original, feeds)["outputs"][0]["max_abs"] == 0


@pytest.mark.parametrize("ir", [3, 8])
def test_defaults_follow_their_sliced_initializer(ir):
    model = conv_net(ir=ir, defaults=True)
    analysis = gp.analyze(gp.load(model))
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in pruned.graph.input}  # fmt: skip
    for tensor in pruned.graph.initializer:
        if tensor.name in declared:
            assert declared[tensor.name] == list(tensor.dims), tensor.name
    assert any(list(t.dims) == [4, 4, 3, 3] for t in pruned.graph.initializer)
    assert interface_problem(interface_of(model), pruned) is None
    assert check_level(pruned) == "full"
    feeds = _feeds(model)
    expected = run(session(gp.mask(analysis, plan)), feeds)
    np.testing.assert_allclose(run(session(pruned), feeds)[0], expected[0], rtol=1e-4, atol=1e-5)


def test_a_caffe2_convert_prunes_with_its_signature(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(caffe2_net(), path)
    assert main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--quiet"]) == 0
    written = onnx.load(out)
    assert _ort_inputs(written) == _ort_inputs(caffe2_net()) == [("x", "tensor(float)",
                                                                   [1, 3, 8, 8])]  # fmt: skip
    assert check_level(written) == "full" and written.ir_version == 3
    assert interface_problem(interface_of(caffe2_net()), written) is None
    assert any(list(t.dims) == [4, 4, 3, 3] for t in written.graph.initializer)


# Hostile inputs: exit 0 with a model as valid as the input, or a one-line refusal


def _stale_value_info(model):
    """A value_info for the output without a shape (graphsurgeon took its shape from it)."""
    model.graph.value_info.append(helper.make_tensor_value_info("y", FLOAT, None))
    return model


HOSTILE = {
    "output is input": conv_net(outputs=[helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])]),
    "inner output": conv_net(outputs=[helper.make_tensor_value_info("r1", FLOAT, [1, 8, 8, 8])]),
    "output without shape": conv_net(outputs=[helper.make_tensor_value_info("x", FLOAT, None)]),
    "value_info without shape": _stale_value_info(conv_net()),
    "conv weight of other channels": conv_net(w2=(4, 6, 3, 3)),
    "negative input dim": conv_net(x=(1, 3, -1, 8)),
    "zero input dim": conv_net(x=(1, 3, 0, 8)),
    "negative output dim": conv_net(y=(1, -4, 8, 8)),
    "output dim inference disagrees with": conv_net(y=(1, 5, 8, 8)),
    "IR 3 without listed initializers": conv_net(ir=3),
}
# Refused: onnxruntime cannot run them (or, unrun, their weights do not fit the channels).
REFUSED = {"conv weight of other channels", "zero input dim"}


@pytest.mark.parametrize("flags", [[], ["--prune-outputs"], ["--no-validate"]])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_models_end_valid_or_refused(name, flags, tmp_path, capsys):
    model = HOSTILE[name]
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    code = main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--quiet", *flags])
    stderr = capsys.readouterr().err.strip().splitlines()
    if name not in REFUSED:  # fixed in the rewrite, not refused
        assert code == 0, stderr
    if code != 0:
        assert code == 1 and len(stderr) == 1 and stderr[0].startswith("graphprune:"), stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
        return
    written = onnx.load(out)
    order = ["none", "structure", "full"]
    assert order.index(check_level(written)) >= order.index(check_level(model)), name
    problem = interface_problem(interface_of(model), written,
                                outputs_may_shrink="--prune-outputs" in flags)  # fmt: skip
    assert problem is None


def test_the_graphsurgeon_shape_loss_is_fixed_in_the_rewrite():
    """The output's shape came from a shape-less value_info: `Field 'shape' of 'type' is
    required but missing`. The rewrite keeps the declared output."""
    model = _stale_value_info(conv_net())
    analysis = gp.analyze(gp.load(model))
    pruned = gp.prune(analysis, gp.plan(analysis, 0.5))
    assert pruned.graph.output[0] == model.graph.output[0]
    assert check_level(pruned) == "full"


# The bytes written are checked


def test_a_written_model_that_fails_the_check_leaves_nothing(tmp_path):
    invalid = conv_net(outputs=[helper.make_tensor_value_info("r1", FLOAT, None)])
    assert check_level(invalid) == "none"
    with pytest.raises(GraphpruneError, match="the written model fails the ONNX checker"):
        save_model(invalid, tmp_path / "out.onnx", check="structure")
    assert list(tmp_path.iterdir()) == []
    save_model(invalid, tmp_path / "out.onnx", check="none")  # as strict as its input
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_a_written_model_is_checked_with_shape_inference_at_full(tmp_path):
    # Passes the checker alone, not strict shape inference (a declared output of 5
    # channels that the Conv makes 4 of).
    model = conv_net(y=(1, 5, 8, 8))
    assert check_level(model) == "structure"
    with pytest.raises(GraphpruneError, match="fails the ONNX checker"):
        save_model(model, tmp_path / "a.onnx", check="full")
    save_model(model, tmp_path / "b.onnx", check="structure")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.onnx"]


def test_a_model_written_with_external_data_is_checked_before_either_file_lands(
    monkeypatch, tmp_path
):
    from graphprune.io import protos

    monkeypatch.setattr(protos, "PROTOBUF_LIMIT", 1000)  # past it: weights go to .data
    invalid = conv_net(outputs=[helper.make_tensor_value_info("r1", FLOAT, None)])
    with pytest.raises(GraphpruneError, match="the written model fails the ONNX checker"):
        save_model(invalid, tmp_path / "out.onnx", check="structure")
    assert list(tmp_path.iterdir()) == []
    save_model(conv_net(), tmp_path / "out.onnx", check="full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)


def test_a_type_the_checker_cannot_represent_fails_the_check_in_one_line():
    # An element type onnx does not know (99) makes full shape inference raise ValueError,
    # not InferenceError: that model fails the full check like any other, it does not crash.
    model = conv_net()
    model.graph.input[0].type.tensor_type.elem_type = 99
    assert check_level(model) == "structure"
    with pytest.raises(GraphpruneError, match="fails the ONNX checker: Invalid tensor data type"):
        check_model(model, level="full")
