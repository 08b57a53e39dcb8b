"""graphprune: structural channel pruning for ONNX models exported from any framework.

    import graphprune as gp

    model = gp.load("model.onnx")
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="l2"))  # or a plain 0.5
    pruned = gp.prune(analysis, plan)
    print(gp.validate(model, pruned))
    gp.save(pruned, "model.pruned.onnx")

or the whole run at once: `gp.prune_model(gp.PruneOptions(model="model.onnx", ...))`.
"""

import os

# onnxruntime's telemetry (1DS, in its recent Linux and macOS wheels; 1.31 here) writes a device
# id and an event cache under ~/.cache/Microsoft/DeveloperTools/.onnxruntime (or
# $XDG_CACHE_HOME) and a session file $TMPDIR/.ses, when onnxruntime is imported. A
# pruning tool run in CI must leave HOME and TMPDIR as it found them, and the environment
# variable, read once when onnxruntime initializes, is its only switch that writes none of
# them (onnxruntime.disable_telemetry_events() comes after the import has written them).
# An explicit ORT_DISABLE_TELEMETRY=0 keeps it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .api import analyze, calibrate, compensate, load, mask, plan, prune, save, validate
from .core.analysis import Analysis, AnalysisOptions, Group
from .core.channels import KINDS, Kind, Reason
from .core.graph import GraphView
from .errors import GraphpruneError, InternalError
from .pipeline import CalibrationOptions, PruneOptions, PruneReport, PruneResult, prune_model
from .planning.budget import Budget
from .planning.plan import Plan, PlanOptions, plan_from_json
from .posttrain.data import CalibrationData
from .posttrain.statistics import CalibrationStats
from .version import __version__

__all__ = [
    "KINDS", "Analysis", "AnalysisOptions", "Budget", "CalibrationData", "CalibrationOptions",
    "CalibrationStats", "GraphView", "GraphpruneError", "Group", "InternalError", "Kind", "Plan",
    "PlanOptions", "PruneOptions", "PruneReport", "PruneResult", "Reason", "__version__",
    "analyze", "calibrate", "compensate", "load", "mask", "plan", "plan_from_json", "prune",
    "prune_model", "save", "validate",
]  # fmt: skip
