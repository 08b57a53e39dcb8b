"""Hand a plan back to PyTorch: `apply_plan(module, report, example_inputs)` cuts the
module's parameters and buffers as graphprune's pruned ONNX model has them and fixes the
layers' size attributes, so the user fine-tunes the pruned module with their own loop.

    pruned = apply_plan(model, "report.json", (example,))   # the export's example inputs

Only this subpackage imports torch (graphprune itself does not need it).
"""

from __future__ import annotations

import importlib.util

from ..errors import GraphpruneError

if importlib.util.find_spec("torch") is None:
    raise GraphpruneError("graphprune.torch needs PyTorch: pip install torch")

from .apply import apply_plan, plan_record

__all__ = ["apply_plan", "plan_record"]
