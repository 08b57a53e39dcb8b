"""LLM scale: the generated LLaMA/Qwen2 models (`tools/make_llm.py`) analyse like the dynamo
exporter's, and models past protobuf's 2 GB limit go through every stage (load, analyze,
prune, check, validate, calibrate, save, reload) without a whole-model serialization. The
limit is lowered for the test (`protos.PROTOBUF_LIMIT`), so a model of a few hundred
kilobytes takes the large-model path end to end."""

from __future__ import annotations

import tempfile

import numpy as np
import onnx
import pytest
from make_llm import PRESETS, build
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.io import protos
from graphprune.io.checks import check_model
from graphprune.io.external import is_external, to_array
from graphprune.io.large import too_large, write_inline

TINY = PRESETS["tiny"]  # hidden 64, 2 layers, 8 query / 4 KV heads, MLP 128, vocab 100
LIMIT = 100_000  # bytes: the tiny model's weights are ~350 kB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(TINY, tmp_path_factory.mktemp("llm"))


@pytest.fixture
def large_limit(monkeypatch, tmp_path):
    """Every model past 100 kB counts as past 2 GB, and every weight as large enough to be
    sliced from disk to disk; temporary files go to a folder the test checks is left empty."""
    from graphprune.core import rewrite

    monkeypatch.setattr(protos, "PROTOBUF_LIMIT", LIMIT)
    monkeypatch.setattr(rewrite, "DEFERRED_ELEMENTS", 1)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def leftovers(folder) -> list[str]:
    """Temporary files left, but the process's spilled weights (removed when it exits)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith("graphprune-weights-")]


def saved(model: onnx.ModelProto, folder) -> list[bytes]:
    """The bytes `gp.save` writes (the model, then its external data when it has any)."""
    folder.mkdir(parents=True, exist_ok=True)
    gp.save(model, folder / "m.onnx")
    return [p.read_bytes() for p in sorted(folder.iterdir())]


def feeds(batch: int = 2, sequence: int = 7) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(3).integers(0, TINY.vocab, (batch, sequence))
    return {"input_ids": ids.astype(np.int64)}


@pytest.mark.parametrize("arch, dtype", [("llama", "float32"), ("llama", "float16"),
                                         ("qwen2", "float32")])  # fmt: skip
def test_generated_llm_groups_like_the_dynamo_export(tmp_path, arch, dtype):
    config = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "arch": arch})
    path = build(config, tmp_path, dtype=dtype)
    onnx.checker.check_model(str(path), full_check=True)
    analysis = gp.analyze(gp.load(path))
    prunable = [(g.kind, g.channels) for g in analysis.groups if g.prunable]
    # Per layer one head group (a KV head with its query heads) and one MLP group, as the
    # dynamo export of transformers' LlamaModel gives; the hidden size and lm_head stay.
    assert prunable == [("heads", TINY.kv_heads), ("mlp", TINY.intermediate)] * TINY.layers
    model = gp.load(path)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, only=("heads", "mlp")))
    pruned = gp.prune(analysis, plan)
    rtol = 1e-2 if dtype == "float16" else 1e-4
    for shape in ((1, 8), (3, 5)):  # dynamic batch and sequence
        inputs = feeds(*shape)
        assert_same_outputs(
            outputs(gp.mask(analysis, plan), inputs), outputs(pruned, inputs), rtol=rtol
        )
    assert outputs(model, feeds())[0].dtype == np.dtype(dtype)


def test_generated_llm_is_deterministic(tmp_path):
    first, second = build(TINY, tmp_path / "a"), build(TINY, tmp_path / "b")
    for suffix in ("", ".data"):
        a = first.with_name(first.name + suffix).read_bytes()
        assert a == second.with_name(second.name + suffix).read_bytes()


def test_past_the_protobuf_limit_end_to_end(tiny, tmp_path, large_limit):
    model = gp.load(tiny)
    assert too_large(model)
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.3, only=("heads", "mlp")))
    pruned = gp.prune(analysis, plan)  # checked without its weights
    assert too_large(pruned)
    validation = gp.validate(model, pruned, inputs=feeds())  # sessions from a temporary path
    assert validation["outputs"]
    out = tmp_path / "out" / "pruned.onnx"
    gp.save(pruned, out)
    data = out.with_name("pruned.onnx.data")
    assert data.stat().st_size > out.stat().st_size
    # The pruned weights stayed on disk (a private file) through sessions and saving, and
    # saving is deterministic.
    assert all(is_external(t) for t in pruned.graph.initializer if t.name.endswith(".weight.T"))
    first = (out.read_bytes(), data.read_bytes())
    gp.save(pruned, out)
    assert (out.read_bytes(), data.read_bytes()) == first
    reloaded = gp.load(out)
    inputs = feeds()
    assert_same_outputs(outputs(gp.mask(analysis, plan), inputs), outputs(reloaded, inputs))
    assert not leftovers(large_limit)  # temporary copies removed
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]


def test_checker_still_rejects_a_broken_large_model(tiny, large_limit):
    model = gp.load(tiny)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    weight = next(t for t in broken.graph.initializer if t.name.endswith("o_proj.weight.T"))
    values = to_array(weight)[:, :-1]
    weight.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(values), weight.name))
    with pytest.raises(GraphpruneError, match="fails the ONNX checker"):
        check_model(broken)


@pytest.mark.parametrize("extra", [[], ["--criterion", "wanda", "--calib-random", "4"],
                                   ["--criterion", "flap", "--compensate", "bias",
                                    "--calib-random", "4"]])  # fmt: skip
def test_cli_prunes_past_the_protobuf_limit(tiny, tmp_path, large_limit, extra, capsys):
    out = tmp_path / "pruned.onnx"
    code = main(["prune", str(tiny), "-o", str(out), "--ratio", "0.3", *extra])
    assert code == 0, capsys.readouterr().err
    assert out.with_name("pruned.onnx.data").is_file()
    reloaded = gp.load(out)
    assert outputs(reloaded, feeds())[0].shape == (2, 7, TINY.vocab)
    assert not leftovers(large_limit)


def test_models_under_the_limit_are_written_as_protobuf_writes_them(tiny, tmp_path):
    lazy, whole = gp.load(tiny), gp.load(onnx.load(tiny))  # weights on disk / in the proto
    assert all(is_external(t) for t in lazy.graph.initializer if t.name.endswith(".weight.T"))
    for model in (lazy, whole):
        model.metadata_props.add(key="k", value="v")
        model.graph.doc_string = "after the initializers"
    empty = onnx.ModelProto()
    empty.CopyFrom(whole)
    del empty.graph.initializer[:]
    for case, expected in ((lazy, whole), (whole, whole), (empty, empty),
                           (onnx.ModelProto(), onnx.ModelProto())):  # fmt: skip
        write_inline(case, tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").read_bytes() == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_weights_sliced_after_the_export_give_the_same_bytes(tmp_path, monkeypatch, dtype):
    from graphprune.core import rewrite

    model = gp.load(build(TINY, tmp_path, dtype=dtype))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.4))
    results = []
    for limit in (rewrite.DEFERRED_ELEMENTS, 1):  # none of the tiny weights, then all
        monkeypatch.setattr(rewrite, "DEFERRED_ELEMENTS", limit)
        results.append([
            saved(gp.prune(analysis, plan), tmp_path / f"{limit}p"),
            saved(gp.mask(analysis, plan), tmp_path / f"{limit}m"),
        ])  # fmt: skip
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("past_limit", [False, True])
def test_weights_on_disk_give_the_bytes_of_weights_in_memory(tmp_path, monkeypatch, dtype,
                                                             past_limit):  # fmt: skip
    """Loaded by path, the weights stay on disk (mapped, sliced from file to file); loaded
    as a ModelProto they are in memory: the pruned and masked models have the same bytes,
    inline under the protobuf limit and with external data past it."""
    from graphprune.core import rewrite

    path = build(TINY, tmp_path / "model", dtype=dtype)
    monkeypatch.setattr(rewrite, "DEFERRED_ELEMENTS", 1)  # every weight sliced after export
    if past_limit:
        monkeypatch.setattr(protos, "PROTOBUF_LIMIT", LIMIT)
    results = []
    for source in (path, onnx.load(path)):
        model = gp.load(source)
        on_disk = [is_external(t) for t in model.graph.initializer if t.name.endswith(".T")]
        assert all(on_disk) if source is path else not any(on_disk)
        analysis = gp.analyze(model)
        plan = gp.plan(analysis, gp.PlanOptions(ratio=0.4, criterion="l2"))
        pruned = gp.prune(analysis, plan)
        folder = tmp_path / str(len(results))
        results.append([saved(pruned, folder / "p"), saved(gp.mask(analysis, plan), folder / "m")])
        assert len(results[-1][0]) == (2 if past_limit else 1)  # external data past the limit
    assert results[0] == results[1]
    reloaded = gp.load(tmp_path / "0" / "p" / "m.onnx")
    oracle = gp.load(tmp_path / "0" / "m" / "m.onnx")
    rtol = 1e-2 if dtype == "float16" else 1e-4
    assert_same_outputs(outputs(oracle, feeds()), outputs(reloaded, feeds()), rtol=rtol)


def test_models_too_large_to_run_here_are_pruned_without_sessions(tiny, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    """A model whose onnxruntime session would not fit in the memory available is pruned
    without one (checked by the ONNX checker and shape inference), says so in one note and
    in the report, and gives the model a run with sessions gives; what needs a session
    (calibration) is refused in one line."""
    import json

    from graphprune.runtime import sessions

    args = ["prune", str(tiny), "--ratio", "0.3", "--only", "heads", "--only", "mlp"]
    assert main([*args, "-o", str(tmp_path / "run.onnx")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sessions, "available_bytes", lambda: 2**20)
    out, report = tmp_path / "unrun.onnx", tmp_path / "report.json"
    assert main([*args, "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "note: not run in onnxruntime: an onnxruntime session of the model needs" in printed
    validation = json.loads(report.read_text())["validation"]
    assert validation["outputs"] == []
    assert validation["skipped"].endswith("and 0.0 GB of memory are available")
    assert out.read_bytes() == (tmp_path / "run.onnx").read_bytes()
    calibrated = [*args, "-o", str(tmp_path / "c.onnx"), "--criterion", "wanda",
                  "--calib-random", "4"]  # fmt: skip
    assert main(calibrated) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("graphprune: error: cannot run the model in onnxruntime: ")
    assert "\n" not in error and not (tmp_path / "c.onnx").exists()


def test_float16_compensation_is_solved_in_float64_and_written_in_float16(tmp_path):
    """Least-squares compensation of a float16 model: statistics and the solve in float64,
    the weights written back in float16 (no float32 tensor added, outputs still float16),
    and the repair is real: closer to the unpruned model than the plain prune."""
    from graphprune.pipeline import CalibrationOptions, PruneOptions, prune_model

    path = build(TINY, tmp_path, dtype="float16")
    ids = {"input_ids": np.random.default_rng(3).integers(0, TINY.vocab, (4, 16))}
    reference = outputs(gp.load(path), ids)[0].astype(np.float64)

    def float_types(model):
        return sorted(t.data_type for t in model.graph.initializer if t.data_type in (1, 10))

    errors = {}
    for method in ("none", "lsq"):
        options = PruneOptions(
            model=str(path), plan=gp.PlanOptions(ratio=0.3, criterion="flap", only=("mlp",)),
            calibration=CalibrationOptions(random=64), compensate=method,
            input_shapes={"input_ids": (1, 16)},
        )  # fmt: skip
        pruned = prune_model(options).model
        out = outputs(pruned, ids)[0]
        assert out.dtype == np.float16
        assert float_types(pruned).count(onnx.TensorProto.FLOAT) == float_types(
            gp.load(path)).count(onnx.TensorProto.FLOAT)  # fmt: skip
        errors[method] = float(np.abs(out.astype(np.float64) - reference).mean())
    assert errors["lsq"] < 0.95 * errors["none"], errors


@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16])
def test_half_precision_weights_on_disk_are_sliced_in_their_type(tmp_path, monkeypatch, dtype):
    """A two-layer MLP with float16 or bfloat16 weights in external data (onnxruntime's
    CPU provider runs no bfloat16 MatMul, so the oracle is the float32 twin, run and
    checked against its masked original): the same channels go, and every pruned weight
    is the float32 twin's pruned weight in the model's type, read from disk and sliced
    from file to file (bytes identical to slicing in memory)."""
    from graphprune.core import rewrite

    monkeypatch.setattr(rewrite, "DEFERRED_ELEMENTS", 1)
    rng = np.random.default_rng(0)
    half = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    weights = [rng.standard_normal(s).astype(half).astype(np.float32) for s in ((16, 32), (32, 8))]
    pruned = {}
    for name, data_type, np_type in (("twin", onnx.TensorProto.FLOAT, np.float32),
                                     ("half", dtype, half)):  # fmt: skip
        nodes = [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                 onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
                 onnx.helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]  # fmt: skip
        graph = onnx.helper.make_graph(
            nodes, "mlp", [onnx.helper.make_tensor_value_info("x", data_type, ["n", 16])],
            [onnx.helper.make_tensor_value_info("y", data_type, ["n", 8])],
            [onnx.numpy_helper.from_array(w.astype(np_type), f"w{i + 1}")
             for i, w in enumerate(weights)],
        )  # fmt: skip
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        model.ir_version = 8  # any onnxruntime reads it
        path = tmp_path / name / "m.onnx"
        path.parent.mkdir()
        onnx.save(model, path, save_as_external_data=True, location="m.onnx.data",
                  size_threshold=0)  # fmt: skip
        lazy = gp.load(path)
        assert all(is_external(t) for t in lazy.graph.initializer)
        analysis = gp.analyze(lazy)
        plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="l2"))
        pruned[name] = gp.prune(analysis, plan)
        in_memory = gp.analyze(gp.load(onnx.load(path)))
        expected = saved(gp.prune(in_memory, plan), tmp_path / name / "b")
        assert saved(pruned[name], tmp_path / name / "a") == expected
        with monkeypatch.context() as patch:  # sliced by graphsurgeon, before the export
            patch.setattr(rewrite, "DEFERRED_ELEMENTS", 2**62)
            assert saved(gp.prune(in_memory, plan), tmp_path / name / "c") == expected
        if name == "twin":
            x = {"x": rng.standard_normal((5, 16)).astype(np.float32)}
            assert_same_outputs(outputs(gp.mask(analysis, plan), x), outputs(pruned[name], x))
    twin = {t.name: to_array(t) for t in pruned["twin"].graph.initializer}
    for tensor in pruned["half"].graph.initializer:
        value = to_array(tensor)
        assert tensor.data_type == dtype and value.shape == twin[tensor.name].shape == (
            (16, 16) if tensor.name == "w1" else (16, 8))  # fmt: skip
        np.testing.assert_array_equal(value.astype(np.float32), twin[tensor.name])
