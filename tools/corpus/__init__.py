"""The real-world corpus (issue 9): torchvision, timm, Hugging Face transformers and
third-party ONNX files, each in several export variants, for `tools/bench_corpus.py`.

    from corpus import entries, materialize, evaluate_path
    for entry in entries(sources=("timm",)):
        for variant in entry.variants:
            row = evaluate_path(entry, variant)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _entry in (REPO, REPO / "tools"):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from .registry import BASE, EXTRA, VARIANTS, Built, Entry, ExportFailed, Variant  # noqa: E402

SOURCES = ("torchvision", "timm", "transformers", "thirdparty", "modelzoo")

__all__ = [
    "BASE",
    "EXTRA",
    "SOURCES",
    "VARIANTS",
    "Built",
    "Entry",
    "ExportFailed",
    "Variant",
    "entries",
    "evaluate_path",
]


def thirdparty_entries() -> list[Entry]:
    import thirdparty

    return [
        Entry(f"thirdparty/{name}", "thirdparty", model.package, ("file",), thirdparty=name)
        for name, model in thirdparty.MODELS.items()
    ]


def entries(sources: tuple[str, ...] = SOURCES) -> list[Entry]:
    """The corpus entries of `sources`, in a fixed order (torchvision is imported to list
    its builders; the other model libraries only when a model is built)."""
    found: list[Entry] = []
    if "torchvision" in sources:
        from .vision import torchvision_entries

        found += torchvision_entries()
    if "timm" in sources:
        from .vision import timm_entries

        found += timm_entries()
    if "transformers" in sources:
        from .text import transformers_entries

        found += transformers_entries()
    if "thirdparty" in sources:
        found += thirdparty_entries()
    if "modelzoo" in sources:
        from .files import modelzoo_entries

        found += modelzoo_entries()
    return found


def evaluate_path(entry: Entry, variant: str) -> dict[str, Any]:
    """Export (cached) and evaluate one (entry, variant); never raises for a model's sake."""
    import onnx

    from .evaluate import evaluate
    from .exporting import materialize

    row: dict[str, Any] = {
        "model": entry.name,
        "source": entry.source,
        "family": entry.family,
        "variant": variant,
    }
    try:
        path = materialize(entry, variant)
    except ExportFailed as error:
        return {**row, "status": "export-failed", "export_error": str(error), "failures": []}
    feeds = None
    if entry.thirdparty is not None:
        import thirdparty

        feeds = thirdparty.validation_input(entry.thirdparty)
    # Dynamic exports run at batch 3 (their example had 2); static ones at their shape.
    batch = 3 if VARIANTS[variant].dynamic else 1
    # Dynamically quantized models prune only with the opt-in approximation.
    approximate = VARIANTS[variant].post == "dynquant"
    model = onnx.load(str(path))
    evaluated = evaluate(model, feeds=feeds, batch=batch, approximate_dynamic_quant=approximate)
    return {**row, **evaluated}
