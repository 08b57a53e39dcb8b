"""The corpus vocabulary: what a model is (an entry), how it is turned into ONNX (a variant).

An entry's `build` returns a `Built`: the torch module in eval mode with its example inputs
and which axes may be dynamic. Third-party entries have no builder: their ONNX file is the
model. Building happens only in the process that exports, so listing the corpus imports
neither torch nor any model library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ExportFailed(RuntimeError):
    """An entry cannot be turned into this variant (not graphprune's failure)."""


@dataclass
class Built:
    """A torch model ready to export."""

    module: Any  # torch.nn.Module; typed loosely so this module does not import torch
    inputs: tuple[Any, ...]  # example tensors, one per graph input
    input_names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: symbolic name} when dynamic
    ort_type: str | None = None  # onnxruntime.transformers optimizer model type
    heads: int = 0
    hidden: int = 0
    larger: Callable[[], Built] | None = None  # the same model at a larger input size


@dataclass(frozen=True)
class Variant:
    """How to produce one ONNX file of an entry."""

    name: str
    exporter: str  # "classic" | "dynamo" | "file" (an ONNX file, as is or re-saved)
    opset: int = 17
    dynamic: bool = False
    post: str | None = None  # "fp16" | "ortopt" | "onnxsim" | "dynquant": applied to the export
    description: str = ""


@dataclass(frozen=True)
class Entry:
    """One model of the corpus."""

    name: str  # unique, "<source>/<model>"
    source: str  # torchvision | timm | transformers | thirdparty | modelzoo
    family: str
    variants: tuple[str, ...]
    build: Callable[[], Built] | None = None
    thirdparty: str | None = None  # tools/thirdparty.py registry name
    file: str | None = None  # an ONNX file on disk (corpus/files.py makes its variants)
    notes: dict[str, str] = field(default_factory=dict, compare=False)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("classic", "classic", 17, description="torch.onnx.export(dynamo=False), static"),
        Variant("dynamo", "dynamo", 18, description="torch.onnx.export(dynamo=True), static"),
        Variant("classic-dyn", "classic", 17, dynamic=True, description="classic, dynamic axes"),
        Variant("dynamo-dyn", "dynamo", 18, dynamic=True, description="dynamo, dynamic axes"),
        Variant("classic-op13", "classic", 13, description="classic, opset 13"),
        Variant("classic-op20", "classic", 20, description="classic, opset 20"),
        Variant("dynamo-op20", "dynamo", 20, description="dynamo, opset 20"),
        Variant("fp16", "classic", 17, post="fp16", description="classic -> float16"),
        Variant("onnxsim", "classic", 17, post="onnxsim", description="classic -> onnxsim"),
        Variant(
            "ortopt",
            "classic",
            17,
            dynamic=True,
            post="ortopt",
            description="classic dynamic -> onnxruntime.transformers optimize_model",
        ),
        Variant(
            "dynquant",
            "classic",
            17,
            post="dynquant",
            description="classic -> onnxruntime quantize_dynamic, pruned with "
            "--approximate-dynamic-quant",
        ),
        Variant("file", "file", 0, description="the file as shipped"),
        Variant("file-random", "file", 0, description="the file, weights x U(0.5,1.5)"),
        Variant("file-fp16", "file", 0, post="fp16", description="file-random -> float16"),
        Variant("file-op13", "file", 13, description="file-random -> opset 13, IR 7"),
        Variant("file-ortopt", "file", 0, post="ortopt",
                description="file-random -> onnxruntime basic graph optimizations"),
    )
}

BASE = ("classic", "dynamo")
# One representative per family gets the rest: every combination for every model would
# multiply the run time without finding new classes of failure.
EXTRA = ("classic-dyn", "dynamo-dyn", "classic-op13", "classic-op20", "fp16", "onnxsim", "dynquant")
