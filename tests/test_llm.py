"""LLMs layer by layer: the layer split runs like the whole model, sequential calibration
gathers the whole-model statistics, the layer-by-layer repair validates against its oracle,
streamed validation catches a wrong slice, and shape computations shared across layers
that lose different numbers of heads are split per consumer (the repeat-KV shape torch's
dynamo exporter builds once for all layers)."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
from make_llm import PRESETS, build
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.core.graph import GraphView
from graphprune.errors import GraphpruneError
from graphprune.pipeline import CalibrationOptions, PruneOptions, prune_model
from graphprune.planning.plan import PlanOptions
from graphprune.posttrain.data import CalibrationData
from graphprune.posttrain.sequential import collect_sequential
from graphprune.posttrain.statistics import collect
from graphprune.runtime.stages import StagedRun, compare_staged, split_layers
from models.transformers_zoo import cached

TINY = PRESETS["tiny"]  # hidden 64, 2 layers, 8 query / 4 KV heads, MLP 128, vocab 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build(TINY, tmp_path_factory.mktemp("llm")))


@pytest.fixture
def private_tmp(monkeypatch, tmp_path):
    """Temporary files go to a folder the test checks is left empty."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def ids(batch: int = 2, sequence: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    values = np.random.default_rng(seed).integers(0, TINY.vocab, (batch, sequence))
    return {"input_ids": values.astype(np.int64)}


def uneven(analysis, removed_per_group: list[list[int]]):
    """A plan removing the given heads of each head group (in graph order)."""
    heads = [g for g in analysis.groups if g.kind == "heads" and g.prunable]
    record = {"groups": [
        {"name": g.name, "sources": g.sources, "channels": g.channels, "removed": removed}
        for g, removed in zip(heads, removed_per_group, strict=True)
    ]}  # fmt: skip
    return gp.plan_from_json(analysis, record)


@pytest.mark.parametrize("source", ["make_llm", "dynamo"])
@pytest.mark.parametrize("removed", [[[0], [1, 3]], [[], [2]]], ids=["1-2", "0-1"])
def test_uneven_kv_heads_across_layers_run_and_match_the_mask(source, removed, tiny):
    """One repeat-KV shape serves every layer's K/V Expand; layers that keep different
    numbers of KV heads each get their own copy of it (a layer that keeps all of them
    disagrees too: it keeps the original)."""
    path = tiny if source == "make_llm" else cached("llama", "dynamo")
    model = gp.load(path)
    analysis = gp.analyze(model)
    plan = uneven(analysis, removed)
    pruned = gp.prune(analysis, plan)
    feeds = ids(batch=2 if source == "make_llm" else 1)
    feeds = {model.graph.input[0].name: feeds["input_ids"]}
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds))
    copies = [n.name for n in pruned.graph.node if "__for_" in n.name]
    assert copies, "the shared shape computation was not split"
    # Even removal keeps the one shared computation (outputs as before this change).
    even = gp.prune(analysis, uneven(analysis, [[0], [1]]))
    assert not [n.name for n in even.graph.node if "__for_" in n.name]


def test_target_params_prunes_kv_heads_unevenly_and_runs(tiny):
    """The budget that broke SmolLM2 (--target-params ranks heads across layers)."""
    model = gp.load(tiny)
    analysis = gp.analyze(model)
    options = PlanOptions(budget=gp.Budget("params", 0.8), only=("heads",), criterion="l1")
    plan = gp.plan(analysis, options)
    pruned = gp.prune(analysis, plan)
    assert_same_outputs(outputs(gp.mask(analysis, plan), ids()), outputs(pruned, ids()))
    assert plan.choices, "nothing pruned"


def test_layers_run_one_at_a_time_like_the_whole_model(tiny, private_tmp):
    model = gp.load(tiny)
    split = split_layers(GraphView(model))
    assert split.stages == TINY.layers + 1
    feeds = ids(batch=4)
    staged = StagedRun(model, split)
    try:
        staged.feed([{k: v[:2] for k, v in feeds.items()}, {k: v[2:] for k, v in feeds.items()}])
        staged.run()
        logits = np.concatenate([staged.outputs(0)[0], staged.outputs(1)[0]])
    finally:
        staged.close()
    np.testing.assert_allclose(logits, outputs(model, feeds)[0], rtol=1e-5, atol=1e-6)
    assert list(private_tmp.iterdir()) == []


def test_sequential_statistics_equal_the_whole_model_ones(tiny, private_tmp):
    analysis = gp.analyze(gp.load(tiny))
    data = CalibrationData(random=12, shapes={"input_ids": (8,)}, seed=3)
    whole = collect(analysis, data, batch=4, scatter=True)
    layers = collect_sequential(analysis, data, batch=4, scatter=True)
    assert whole.samples == layers.samples == 12
    assert set(whole.moments) == set(layers.moments)
    for key, moments in whole.moments.items():
        np.testing.assert_allclose(layers.moments[key].mean, moments.mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(layers.moments[key].m2, moments.m2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(layers.moments[key].scatter, moments.scatter,
                                   rtol=1e-5, atol=1e-7)  # fmt: skip
    assert list(private_tmp.iterdir()) == []


def test_sequential_and_whole_calibration_choose_the_same_channels(tiny):
    def run(mode: str):
        options = PruneOptions(
            model=tiny, plan=PlanOptions(ratio=0.5, criterion="flap", only=("heads", "mlp")),
            calibration=CalibrationOptions(random=8, batch=4, mode=mode),
        )  # fmt: skip
        return prune_model(options)

    whole, layers = run("whole"), run("sequential")
    assert whole.report["plan"]["groups"] == layers.report["plan"]["groups"]
    assert layers.report["validation"]["mode"].startswith("layer by layer")
    assert layers.report["validation"]["outputs"][0]["max_rel"] < 1e-4


def test_layerwise_repair_validates_against_its_oracle(tiny, tmp_path, capsys):
    """The repaired layers differ from the one-shot repair (each layer sees the pruned
    layers before it) and the pruned model equals its masked repaired original."""
    reports = {}
    for mode in ("whole", "sequential"):
        out, report = tmp_path / f"{mode}.onnx", tmp_path / f"{mode}.json"
        code = main(["prune", tiny, "-o", str(out), "--ratio", "0.5", "--only", "heads",
                     "--only", "mlp", "--criterion", "flap", "--compensate", "lsq",
                     "--calib-random", "16", "--calib-batch", "4", "--calib-mode", mode,
                     "--report", str(report), "--quiet"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        reports[mode] = json.loads(report.read_text())
    layers = reports["sequential"]["validation"]
    assert layers["mode"] == "layer by layer against the masked original (2 layers)"
    assert layers["outputs"][0]["max_rel"] < 1e-4 and len(layers["layers"]) == 1
    assert reports["whole"]["plan"]["groups"] == reports["sequential"]["plan"]["groups"]
    a, b = (gp.load(tmp_path / f"{m}.onnx") for m in ("whole", "sequential"))
    assert not np.allclose(outputs(a, ids())[0], outputs(b, ids())[0], atol=1e-6)


def test_streamed_validation_catches_a_wrong_slice(tiny, private_tmp):
    model = gp.load(tiny)
    analysis = gp.analyze(model)
    plan = uneven(analysis, [[0], [2]])
    right = gp.prune(analysis, plan)
    wrong = gp.prune(analysis, uneven(analysis, [[1], [2]]))  # another head of layer 0
    split = split_layers(analysis.view)
    reference = gp.mask(analysis, plan)
    good = compare_staged(reference, right, split, [ids()])
    bad = compare_staged(reference, wrong, split, [ids()])
    assert good["outputs"][0]["max_rel"] < 1e-5
    assert bad["layers"][0]["max_rel"] > 1e-2  # caught at the first layer's boundary
    assert bad["outputs"][0]["max_rel"] > 1e-2
    assert list(private_tmp.iterdir()) == []


def test_sequential_mode_refuses_what_it_cannot_split(tmp_path):
    from oracle import GraphBuilder  # a model without residual layers

    b = GraphBuilder()
    x = b.input((1, 4))
    y = b.op("Relu", [b.op("Gemm", [x, b.weight(8, 4), b.weight(8)], transB=1)])
    b.output(b.op("Gemm", [y, b.weight(3, 8), b.weight(3)], transB=1))
    model = b.model()
    options = PruneOptions(model=model, plan=PlanOptions(ratio=0.5, criterion="wanda"),
                           calibration=CalibrationOptions(random=4, mode="sequential"))  # fmt: skip
    with pytest.raises(GraphpruneError, match="no residual layers"):
        prune_model(options)


def test_a_model_whose_session_does_not_fit_is_calibrated_and_validated_by_layers(
    tiny, tmp_path, monkeypatch, capsys
):
    """Memory for one layer's session but not the whole model's: calibration goes layer by
    layer by itself (--calib-mode auto) and so does validation (the report says which)."""
    from graphprune.runtime import sessions

    whole = sessions.session_bytes(gp.load(tiny), "CPUExecutionProvider")
    monkeypatch.setattr(sessions, "available_bytes", lambda: whole - 1)
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    code = main(["prune", tiny, "-o", str(out), "--target-params", "0.8", "--only", "heads",
                 "--only", "mlp", "--criterion", "flap", "--compensate", "bias",
                 "--calib-random", "8", "--calib-batch", "4", "--report", str(report)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["calibration"]["notes"] == ["calibrated layer by layer (2 layers)"]
    assert data["validation"]["mode"].startswith("layer by layer against the masked original")
    assert data["validation"]["outputs"][0]["max_rel"] < 1e-4
    assert "layer by layer" in capsys.readouterr().out


def test_auto_damping_is_chosen_per_layer_by_sequential_repair(tiny, tmp_path, capsys):
    """`--damp auto` with layer-by-layer repair: each layer's statistics are kept in folds
    and every compensated consumer gets its held-out choice, as in the whole-model repair."""
    reports = {}
    for mode in ("whole", "sequential"):
        out, report = tmp_path / f"{mode}.onnx", tmp_path / f"{mode}.json"
        code = main(["prune", tiny, "-o", str(out), "--ratio", "0.5", "--only", "mlp",
                     "--criterion", "wanda", "--compensate", "lsq", "--damp", "auto",
                     "--calib-random", "16", "--calib-batch", "4", "--calib-mode", mode,
                     "--report", str(report), "--quiet"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        reports[mode] = json.loads(report.read_text())["compensation"]
    whole, layers = (reports[m]["damping"] for m in ("whole", "sequential"))
    assert [row["node"] for row in layers] == [row["node"] for row in whole]
    assert len(layers) == 2  # the two MLP down projections
    assert not any("too few calibration samples" in note for note in reports["sequential"]["notes"])
