"""A fast slice of the real-world corpus (tools/corpus, issue 9): real torchvision and timm
models exported and pruned through the benchmark's own code path (export, analyze, prune at
0.3 and 0.5, checker, onnxruntime, masking oracle). torchvision and timm are not graphprune
dependencies: the test is skipped, with the reason, without them."""

from __future__ import annotations

import pytest

corpus = pytest.importorskip("corpus")

CASES = [
    ("torchvision/mobilenet_v3_small", "classic"),
    ("torchvision/resnet18", "dynamo-dyn"),
    ("torchvision/mobilenet_v3_small", "dynquant"),  # quantize_dynamic, pruned with the option
    ("timm/vit_tiny_patch16_224", "classic"),
]


@pytest.fixture(scope="module")
def registry():
    try:
        from corpus.vision import import_torchvision

        import_torchvision()
        import timm  # noqa: F401
    except Exception as error:  # ImportError, or a torchvision built for another torch
        pytest.skip(f"torchvision/timm not importable: {type(error).__name__}: {error}")
    return {entry.name: entry for entry in corpus.entries(("torchvision", "timm"))}


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_corpus_entry_passes(registry, name, variant, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CORPUS_CACHE", str(tmp_path))
    row = corpus.evaluate_path(registry[name], variant)
    assert row["status"] == "pass", row
    assert row["ratios"]["0.5"]["params_removed"] > 0.2
    assert row["ratios"]["0.3"]["oracle_rel"] < 1e-4
