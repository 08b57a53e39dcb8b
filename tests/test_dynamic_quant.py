"""Dynamic quantization (issue 23): DynamicQuantizeLinear + MatMulInteger/ConvInteger, as
onnxruntime's `quantize_dynamic` writes them, pruned under `--approximate-dynamic-quant`.

The quantizer's scale is the range of the whole tensor, [min(0, min x), max(0, max x)], so
the masked original (consumers' weights zeroed) is not the reference: the kept channels
are requantized on the kept channels' range. The references here are a model built at the
kept width from the same integers (independent of graphprune's rewrite) and the oracle
with the removed channels zeroed at the quantizer's input, which can no longer hold the
range. By default the quantizer is a barrier that names the option, and the command line
says so where the user looks (the summary line, `--strict`)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from oracle import GraphBuilder, assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.core.rules.quantized import DYNAMIC_QUANT_OPTION
from graphprune.inspect.report import barrier_rows
from graphprune.planning.plan import GroupChoice, Plan
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.export import cached

quantization = pytest.importorskip("onnxruntime.quantization")

WIDTH = 32


def _layer(g: GraphBuilder, x: str, q: np.ndarray, zero, scale, bias) -> str:
    """MatMulInteger of x quantized dynamically and int8 q, rescaled in float as
    `quantize_dynamic` writes it: Cast, Mul by x_scale * w_scale (per tensor or per column),
    Add bias."""
    xq, x_scale, x_zero = g.op("DynamicQuantizeLinear", [x], outputs=3)
    product = g.op("MatMulInteger", [xq, g.const(q), x_zero, g.const(zero)])
    scales = g.op("Mul", [x_scale, g.const(scale)])
    return g.op("Add", [g.op("Mul", [g.op("Cast", [product], to=1), scales]), g.const(bias)])


def _dynamic_mlp(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x [1, 4, 16] -> dynamic layer -> Relu -> dynamic layer -> [1, 4, 8]; the hidden
    width is whatever `params` hold (the full model, or one built at the kept width)."""
    g = GraphBuilder(opset=17)
    first, second = ([params[k + i] for k in ("q", "z", "s", "b")] for i in "12")
    h = g.op("Relu", [_layer(g, g.input([1, 4, 16]), *first)])
    g.output(_layer(g, h, *second))
    return g.model()


def _params(per_column: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    columns = WIDTH if per_column else ()
    return {
        "q1": rng.integers(-127, 128, (16, WIDTH)).astype(np.int8),
        "z1": np.zeros(columns, np.int8),
        "s1": rng.uniform(0.005, 0.02, columns).astype(np.float32),
        "b1": rng.normal(0, 0.5, WIDTH).astype(np.float32),
        "q2": rng.integers(-127, 128, (WIDTH, 8)).astype(np.int8),
        "z2": np.zeros((), np.int8),
        "s2": np.float32(0.01),
        "b2": rng.normal(0, 0.1, 8).astype(np.float32),
    }


def _kept_width(params: dict[str, np.ndarray], kept: np.ndarray) -> dict[str, np.ndarray]:
    """The same integers, scales and biases at the kept hidden width."""
    small = dict(params, q1=params["q1"][:, kept], b1=params["b1"][kept], q2=params["q2"][kept])
    for key in ("z1", "s1"):
        small[key] = params[key][kept] if params[key].ndim else params[key]
    return small


def _plan(analysis, group, removed: list[int]) -> Plan:
    removed = sorted(int(i) for i in removed)
    kept = sorted(set(range(group.channels)) - set(removed))
    return Plan([GroupChoice(group.id, removed, kept)], group.classes[removed])


def test_dynamic_quantization_is_a_barrier_that_names_its_option():
    model = gp.load(_dynamic_mlp(_params(per_column=False)))
    analysis = gp.analyze(model)
    assert not analysis.prunable_groups
    row, output = barrier_rows(analysis)  # the hidden width, the model's output
    assert output["option"] == "--prune-outputs"
    assert row["option"] == DYNAMIC_QUANT_OPTION == "--approximate-dynamic-quant"
    assert row["reason"].startswith("DynamicQuantizeLinear: quantizes with the range")
    approximate = gp.analyze(model, approximate_dynamic_quant=True)
    assert [group.channels for group in approximate.prunable_groups] == [WIDTH]
    assert "range of the kept channels" in str(approximate.prunable_groups[0].approximations[0])
    # --approximate-norms is about normalizations: it does not lift this barrier.
    assert not gp.analyze(model, approximate_norms=True).prunable_groups


@pytest.mark.parametrize("per_column", [False, True])
def test_pruned_model_equals_the_model_built_at_the_kept_width(per_column):
    """Remove the channels that hold the top of the hidden range (the quantizer's scale
    changes): the pruned model equals the model built from the kept integers, and so does
    the oracle; the plain masked original (no zeroing at the quantizer) does not."""
    params = _params(per_column)
    model = gp.load(_dynamic_mlp(params))
    analysis = gp.analyze(model, approximate_dynamic_quant=True)
    (group,) = analysis.prunable_groups
    feeds = random_inputs(model, input_shapes(model), seed=2)
    hidden = feeds["x"][0] @ (params["q1"].astype(np.float32) * params["s1"]) + params["b1"]
    removed = list(np.argsort(hidden.max(axis=0))[-WIDTH // 4 :])  # they hold the maximum
    plan = _plan(analysis, group, removed)
    pruned = gp.prune(analysis, plan)
    kept = np.asarray(plan.choices[0].kept)
    reference = _dynamic_mlp(_kept_width(params, kept))
    assert_same_outputs(outputs(reference, feeds), outputs(pruned, feeds), rtol=1e-6)
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds), rtol=1e-6)
    stored = [tuple(t.dims) for t in pruned.graph.initializer]
    assert {(16, 24), (24, 8)} <= set(stored)
    assert stored.count((24,)) == (3 if per_column else 1)  # bias (scale, zero point)
    # The approximation is real: masking only the consumer's rows leaves the removed
    # channels in the range, and the kept channels' integers change.
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    second = next(t for t in zeroed.graph.initializer if tuple(t.dims) == (WIDTH, 8))
    rows = onnx.numpy_helper.to_array(second).copy()
    rows[removed] = 0
    second.CopyFrom(onnx.numpy_helper.from_array(rows, second.name))
    with pytest.raises(AssertionError):
        assert_same_outputs(outputs(zeroed, feeds), outputs(pruned, feeds), rtol=1e-6)


def test_the_oracle_catches_a_wrong_slice():
    params = _params(per_column=True)
    model = gp.load(_dynamic_mlp(params))
    analysis = gp.analyze(model, approximate_dynamic_quant=True)
    (group,) = analysis.prunable_groups
    plan = gp.plan(analysis, 0.5)
    feeds = random_inputs(model, input_shapes(model), seed=3)
    masked = outputs(gp.mask(analysis, plan), feeds)
    assert_same_outputs(masked, outputs(gp.prune(analysis, plan), feeds), rtol=1e-6)
    shifted = sorted({(i + 1) % group.channels for i in plan.choices[0].removed})
    wrong = gp.prune(analysis, _plan(analysis, group, shifted))
    with pytest.raises(AssertionError):
        assert_same_outputs(masked, outputs(wrong, feeds))


def _conv_layer(g: GraphBuilder, x: str, w: np.ndarray, scale: float, bias: np.ndarray) -> str:
    """ConvInteger with its bias quantized at run time, as older `quantize_dynamic` wrote
    it (ddddocr's `common_old.onnx`): int32 Reshape(Cast(Floor(bias / (x_scale *
    w_scale))), [1, C, 1, 1]) added to the integer sum, then Cast and Mul back to float."""
    xq, x_scale, x_zero = g.op("DynamicQuantizeLinear", [x], outputs=3)
    product = g.op("ConvInteger", [xq, g.const(w), x_zero, g.const(np.uint8(128))], pads=[1] * 4)
    scales = g.op("Mul", [x_scale, g.const(np.float32(scale))])
    steps = g.op("Floor", [g.op("Div", [g.const(bias), scales])])
    shape = g.const(np.array([1, -1 if bias.size == 1 else bias.size, 1, 1], np.int64))
    quantized_bias = g.op("Reshape", [g.op("Cast", [steps], to=6), shape])
    total = g.op("Cast", [g.op("Add", [product, quantized_bias])], to=1)
    return g.op("Mul", [total, g.op("Mul", [x_scale, g.const(np.float32(scale))])])


def _dynamic_cnn(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    g = GraphBuilder(opset=17)
    h = g.op("Relu", [_conv_layer(g, g.input([1, 3, 8, 8]), w1, 0.01, b1)])
    g.output(_conv_layer(g, h, w2, 0.02, np.full(4, 0.1, np.float32)))
    return g.model()


def test_a_bias_quantized_at_run_time_is_sliced_where_it_is_computed():
    rng = np.random.default_rng(5)
    w1 = rng.integers(0, 256, (WIDTH, 3, 3, 3)).astype(np.uint8)
    b1 = rng.normal(0, 0.5, WIDTH).astype(np.float32)
    w2 = rng.integers(0, 256, (4, WIDTH, 3, 3)).astype(np.uint8)
    model = gp.load(_dynamic_cnn(w1, b1, w2))
    assert not gp.analyze(model).prunable_groups  # the quantizer's range: the barrier
    analysis = gp.analyze(model, approximate_dynamic_quant=True)
    (group,) = analysis.prunable_groups
    assert group.channels == WIDTH
    plan = gp.plan(analysis, 0.25)
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=6)
    masked = outputs(gp.mask(analysis, plan), feeds)
    assert_same_outputs(masked, outputs(pruned, feeds), rtol=1e-6)
    kept = np.asarray(plan.choices[0].kept)
    reference = _dynamic_cnn(w1[kept], b1[kept], w2[:, kept])  # built at the kept width
    assert_same_outputs(outputs(reference, feeds), outputs(pruned, feeds), rtol=1e-6)
    shifted = sorted({(i + 1) % WIDTH for i in plan.choices[0].removed})
    wrong = gp.prune(analysis, _plan(analysis, group, shifted))
    with pytest.raises(AssertionError):
        assert_same_outputs(masked, outputs(wrong, feeds))


def _quantized(source, tmp_path, per_channel: bool = False) -> onnx.ModelProto:
    """`quantize_dynamic` of an export. Its shape inference refuses the dynamo exporter's
    value_info (a MatMul's recorded shape), so that goes first: it is only a hint."""
    model = onnx.load(source)
    del model.graph.value_info[:]
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(model, src)
    quantization.quantize_dynamic(str(src), str(dst), per_channel=per_channel)
    return onnx.load(dst)


def _prune_and_check(model: onnx.ModelProto, ratio: float):
    model = gp.load(model)
    analysis = gp.analyze(model, approximate_dynamic_quant=True)
    plan = gp.plan(analysis, ratio)
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=1)
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds))
    kinds = {(n.domain, n.op_type) for n in model.graph.node}
    assert {(n.domain, n.op_type) for n in pruned.graph.node} == kinds  # still quantized
    params = [sum(int(np.prod(t.dims)) for t in m.graph.initializer) for m in (model, pruned)]
    return analysis, 1 - params[1] / params[0]


@pytest.mark.parametrize("name,exporter", [("resnet18", "classic"), ("mobilenetv2", "dynamo")])
def test_real_dynamic_quantized_cnns_prune(name, exporter, tmp_path):
    model = _quantized(cached(name, exporter), tmp_path)
    assert not gp.analyze(gp.load(model)).prunable_groups
    analysis, removed = _prune_and_check(model, 0.5)
    assert len(analysis.prunable_groups) == len(analysis.groups) - 1  # all but the logits
    assert removed > 0.3


@pytest.mark.parametrize("name,exporter,per_channel", [("llama", "dynamo", False),
                                                       ("bert", "classic", True)])  # fmt: skip
def test_real_dynamic_quantized_transformers_keep_heads_and_mlp(name, exporter, per_channel,
                                                                tmp_path):  # fmt: skip
    """LLaMA (grouped-query attention) and BERT with per-column weight scales (Mul of the
    activation scale and a constant per column, sliced where it is computed)."""
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    from models.transformers_zoo import cached as transformer

    model = _quantized(transformer(name, exporter), tmp_path, per_channel=per_channel)
    analysis, removed = _prune_and_check(model, 0.3)
    assert sorted(g.kind for g in analysis.prunable_groups) == ["heads"] * 2 + ["mlp"] * 2
    assert removed > 0.05


def _save_dynamic_mlp(tmp_path):
    path = tmp_path / "dynamic.onnx"
    onnx.save(_dynamic_mlp(_params(per_column=False)), path)
    return path


def test_summary_names_the_barrier_and_option_and_strict_fails(tmp_path, capsys):
    path, out = _save_dynamic_mlp(tmp_path), tmp_path / "out.onnx"
    assert main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pruned 0 of 2 groups" in printed
    assert "nothing pruned: 2 of 2 groups are kept by barriers, most often (1 groups)" in printed
    assert "DynamicQuantizeLinear" in printed and "--approximate-dynamic-quant lifts it" in printed
    strict = tmp_path / "strict.onnx"
    report = tmp_path / "r.json"
    code = main(["prune", str(path), "-o", str(strict), "--ratio", "0.5", "--strict", "--quiet",
                 "--report", str(report)])  # fmt: skip
    assert code == 4
    assert not strict.exists() and not report.exists()
    error = capsys.readouterr().err
    assert error.startswith("graphprune: error: nothing pruned") and "--strict" in error
    assert main(["analyze", str(path)]) == 0  # analyze names the option too
    assert "range of all channels (removing some changes it) (--approximate-dynamic-quant " \
        "lifts it)" in capsys.readouterr().out


def test_the_option_prunes_and_a_plan_reapplies_it(tmp_path, capsys):
    path, out, again = _save_dynamic_mlp(tmp_path), tmp_path / "out.onnx", tmp_path / "again.onnx"
    report = tmp_path / "r.json"
    code = main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--strict", "--quiet",
                 "--approximate-dynamic-quant", "--report", str(report)])  # fmt: skip
    assert code == 0
    assert "pruned 1 of 2 groups" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["plan"]["options"]["approximate_dynamic_quant"] is True
    assert [row["option"] for row in data["barriers"]] == ["--prune-outputs"]
    assert "range of the kept channels" in data["groups"][0]["approximations"][0]
    # The plan re-applies without the option: the report recorded it.
    assert main(["prune", str(path), "-o", str(again), "--plan", str(report), "--quiet"]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_the_summary_says_when_barriers_leave_much_less_than_asked(tmp_path, capsys):
    """A free group (8 channels) and three kept (32 and 32 behind quantizers, 8 output)."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    y = g.op("Relu", [g.conv(g.op("Relu", [g.conv(x, 3, 8)]), 8, WIDTH)])
    params = _params(per_column=False)
    flat = g.op("ReduceMean", [y], axes=[2, 3], keepdims=0)
    q1 = g.rng.integers(-127, 128, (WIDTH, WIDTH)).astype(np.int8)
    h = _layer(g, g.op("Unsqueeze", [flat, g.const(np.array([1]))]), q1, params["z1"],
               params["s1"], params["b1"])  # fmt: skip
    g.output(_layer(g, g.op("Relu", [h]), *(params[k] for k in ("q2", "z2", "s2", "b2"))))
    path, out = tmp_path / "mixed.onnx", tmp_path / "out.onnx"
    onnx.save(g.model(), path)
    assert main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pruned 1 of 4 groups" in printed  # 4 of the 80 channels
    assert "pruned 5.0% where 50% was asked: 3 of 4 groups are kept by barriers" in printed
    assert "most often (2 groups) DynamicQuantizeLinear" in printed
    assert "--approximate-dynamic-quant lifts it" in printed
