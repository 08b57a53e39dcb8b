"""Make torchvision importable beside the CPU build of torch.

PyPI's torchvision wheels are CUDA builds. Beside CPU torch, `import torchvision` fails
("operator torchvision::nms does not exist"), and so do `import transformers` and
`import timm`, which import torchvision whenever it is installed. Model definitions need
none of torchvision's compiled ops: declaring their schemas lets the import succeed
(`torchvision.ops.nms` itself still does not work).
"""

from __future__ import annotations

import importlib.util
import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # a torch.library.Library must stay alive for its definitions to last


def import_torchvision():
    """torchvision, imported on CPU torch too; None when it is not installed."""
    global _library
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        import torchvision
    return torchvision
