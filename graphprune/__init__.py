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
