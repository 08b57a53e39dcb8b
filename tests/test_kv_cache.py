"""A KV cache the caller feeds and reads, as onnxruntime-genai's model builder writes a
decoder (past_key_values.N.key/value in, present.N.key/value out, GroupQueryAttention):
its heads stay unless --prune-kv-cache, and with it the cache inputs and outputs lose
exactly the heads the attention loses. The pruned model decodes step by step, its cache
fed back, as the masked original does at the kept heads (the oracle)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fused_models import cached as fused_cached
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.io.genai import genai_config
from graphprune.io.interface import interface_of, interface_problem, resized

LAYERS, KV_HEADS, HEAD = 2, 4, 8  # the zoo's LLaMA: 8 query heads, 4 KV heads of 8
CACHES = [f"{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]


@pytest.fixture(scope="module")
def decoder():
    return gp.load(fused_cached("llama_gqa_cache"))


def empty_cache(batch: int, heads: int | list[int] = KV_HEADS) -> dict[str, np.ndarray]:
    counts = [heads] * LAYERS if isinstance(heads, int) else heads
    return {f"past_key_values.{name}": np.zeros((batch, counts[int(name[0])], 0, HEAD), np.float32)
            for name in CACHES}  # fmt: skip


def decode(model, ids: np.ndarray, steps: list[int], past: dict) -> list[list[np.ndarray]]:
    """Run `model` over `ids` in chunks of `steps` tokens, each step's present cache fed
    back as the next step's past; every step's outputs."""
    results, done = [], 0
    for size in steps:
        chunk = ids[:, done : done + size]
        done += size
        mask = np.ones((ids.shape[0], done), np.int64)
        result = outputs(model, {"input": chunk, "mask": mask, **past})
        past = {f"past_key_values.{n}": v for n, v in zip(CACHES, result[1:], strict=True)}
        results.append(result)
    return results


def uneven_plan(analysis, removed: list[list[int]]):
    heads = [g for g in analysis.groups if g.kind == "heads"]
    record = {"groups": [
        {"name": g.name, "sources": g.sources, "channels": g.channels, "removed": r}
        for g, r in zip(heads, removed, strict=True)
    ]}  # fmt: skip
    return gp.plan_from_json(analysis, record)


def test_the_cache_decoder_decodes_like_the_whole_sequence(decoder):
    """The builder-style decoder itself: a prompt, then one token at a time with the
    cache fed back, computes what one run over the whole sequence does."""
    ids = np.random.default_rng(0).integers(0, 100, (2, 7))
    whole = decode(decoder, ids, [7], empty_cache(2))[0]
    steps = decode(decoder, ids, [4, 1, 1, 1], empty_cache(2))
    assert_same_outputs([whole[0]], [np.concatenate([s[0] for s in steps], axis=1)])
    assert_same_outputs(whole[1:], steps[-1][1:])


def test_heads_stay_without_the_option(decoder):
    heads = [g for g in gp.analyze(decoder).groups if g.kind == "heads"]
    assert len(heads) == LAYERS and not any(g.prunable for g in heads)
    for group in heads:
        assert any(r.option == "--prune-kv-cache" and "KV cache" in r.message
                   for r in group.reasons)  # fmt: skip


def test_pruned_cache_decodes_like_the_masked_original(decoder):
    """Layers lose different KV heads (1 of 4, 2 of 4): each layer's cache inputs and
    outputs narrow to its kept heads, and four decoding steps give the masked original's
    hidden states and, at the kept heads, its cache."""
    analysis = gp.analyze(decoder, prune_cache=True)
    heads = [g for g in analysis.groups if g.kind == "heads"]
    assert all(g.prunable for g in heads)
    plan = uneven_plan(analysis, [[1], [0, 3]])
    pruned, oracle = gp.prune(analysis, plan), gp.mask(analysis, plan)
    kept = analysis.cache_positions(plan.keep_atom(analysis))
    assert sorted(kept) == sorted(
        [f"past_key_values.{n}" for n in CACHES] + [f"present.{n}" for n in CACHES]
    )
    assert kept["past_key_values.0.key"][1].tolist() == [0, 2, 3]
    assert kept["present.1.value"][1].tolist() == [1, 2]
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in [*pruned.graph.input, *pruned.graph.output]}  # fmt: skip
    assert dims["past_key_values.0.key"] == ["batch", 3, "past_sequence", HEAD]
    assert dims["present.1.value"] == ["batch", 2, "total_sequence", HEAD]
    assert dims["output"] == ["batch", "sequence", 64]

    ids = np.random.default_rng(1).integers(0, 100, (2, 7))
    expected = decode(oracle, ids, [4, 1, 1, 1], empty_cache(2))
    actual = decode(pruned, ids, [4, 1, 1, 1], empty_cache(2, [3, 2]))
    for want, got in zip(expected, actual, strict=True):
        at_kept = [np.take(v, kept[f"present.{n}"][1], axis=1)
                   for n, v in zip(CACHES, want[1:], strict=True)]  # fmt: skip
        assert_same_outputs([want[0], *at_kept], got)
    # The check can fail: the cache of the wrong heads (the first ones) decodes otherwise.
    first = zip(CACHES, expected[0][1:], strict=True)  # the prompt's cache, 4 tokens
    past = {f"past_key_values.{n}": v for n, v in first}
    wrong = {name: value[:, : kept[name][1].size] for name, value in past.items()}
    right = {name: np.take(value, kept[name][1], axis=1) for name, value in past.items()}
    feeds = {"input": ids[:, 4:5], "mask": np.ones((2, 5), np.int64)}
    good, bad = outputs(pruned, feeds | right)[0], outputs(pruned, feeds | wrong)[0]
    assert_same_outputs([outputs(oracle, feeds | past)[0]], [good])
    assert np.abs(good - bad).max() > 1e-2 * np.abs(good).max()


def test_the_interface_changes_at_the_cache_heads_only(decoder):
    analysis = gp.analyze(decoder, prune_cache=True)
    plan = uneven_plan(analysis, [[2], []])
    sizes = analysis.cache_sizes(plan.keep_atom(analysis))
    assert sizes["past_key_values.0.key"] == (1, 3) and sizes["present.1.key"] == (1, 4)
    expected = resized(interface_of(decoder), sizes)
    assert interface_problem(expected, gp.prune(analysis, plan)) is None
    # The full-width model (the oracle) is not what the narrowed contract allows.
    problem = interface_problem(expected, gp.mask(analysis, plan))
    assert problem is not None and "past_key_values.0.key" in problem


def cache_inputs(path, past: int = 4, new: int = 1) -> None:
    """One decoding step (onnxruntime's GroupQueryAttention takes a past with several new
    tokens at batch 1 only)."""
    rng = np.random.default_rng(2)
    feeds = {"input": rng.integers(0, 100, (2, new)), "mask": np.ones((2, past + new), np.int64)}
    for name in CACHES:
        feeds[f"past_key_values.{name}"] = rng.standard_normal((2, KV_HEADS, past, HEAD))
    np.savez(path, **{k: v.astype(np.float32) if v.dtype == np.float64 else v
                      for k, v in feeds.items()})  # fmt: skip


def test_cli_prunes_the_cache_and_writes_the_genai_config(decoder, tmp_path):
    """`--ratio 0.25 --only heads --prune-kv-cache`: one KV head of four in every layer;
    validation feeds the pruned model the cache at the kept heads and compares its cache
    outputs there; genai_config.json is written beside the model with the kept counts."""
    source = tmp_path / "in"
    source.mkdir()
    model = source / "model.onnx"
    model.write_bytes(decoder.SerializeToString())
    config = {"model": {"decoder": {"filename": "model.onnx", "num_attention_heads": 8,
                                    "num_key_value_heads": 4, "head_size": HEAD}}}  # fmt: skip
    (source / "genai_config.json").write_text(json.dumps(config))
    cache_inputs(tmp_path / "feeds.npz")
    out, report = tmp_path / "out" / "pruned.onnx", tmp_path / "out" / "report.json"
    out.parent.mkdir()
    args = ["prune", str(model), "-o", str(out), "--report", str(report), "--quiet",
            "--ratio", "0.25", "--only", "heads", "--inputs", str(tmp_path / "feeds.npz"),
            "--prune-kv-cache", "--genai-config", str(source / "genai_config.json")]  # fmt: skip
    assert main(args) == 0
    written = json.loads((out.parent / "genai_config.json").read_text())["model"]["decoder"]
    assert written == {"filename": "pruned.onnx", "num_attention_heads": 6,
                       "num_key_value_heads": 3, "head_size": HEAD}  # fmt: skip
    validation = json.loads(report.read_text())["validation"]["outputs"]
    assert [o["name"] for o in validation] == ["output", *[f"present.{n}" for n in CACHES]]
    assert validation[1]["shape"] == [2, 3, 5, HEAD]  # 4 past + 1 new, 3 of 4 heads
    assert all(o["max_rel"] is not None for o in validation)
    assert json.loads(report.read_text())["plan"]["options"]["prune_kv_cache"] is True
    # Without the option the same prune keeps every head (the cache is the caller's).
    assert main([*args[:-3], "-o", str(tmp_path / "kept.onnx"), "--strict"]) != 0
    assert not (tmp_path / "kept.onnx").exists()


def test_genai_config_needs_equal_counts_in_every_layer(decoder):
    analysis = gp.analyze(decoder, prune_cache=True)
    pruned = gp.prune(analysis, uneven_plan(analysis, [[1], [0, 3]]))
    text = json.dumps({"model": {"decoder": {"num_key_value_heads": 4}}})
    with pytest.raises(GraphpruneError, match="different head counts"):
        genai_config(text, pruned, "model.onnx")
    with pytest.raises(GraphpruneError, match="not an onnxruntime-genai config"):
        genai_config("{}", pruned, "model.onnx")
