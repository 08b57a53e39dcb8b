"""The per-op channel rules: one short function per ONNX op family.

A rule receives a `Context` for one node and describes, in the words of the ONNX operator
spec, how channel indices flow through the op. An op without a rule is a barrier: the
channels reaching it are frozen and the analysis says which op stopped them. Rules
register themselves in `registry.RULES` when their module is imported here.
"""

from . import (  # noqa: F401
    attention,
    conv,
    counts,
    elementwise,
    linear,
    moe,
    normalization,
    quantized,
    recurrent,
    reduction,
    reshape,
    routing,
    shape,
)
from .context import Context, Recorder
from .registry import RULES, Rule, apply_rule, count_rule, find_rule, rule

__all__ = ["RULES", "Context", "Recorder", "Rule", "apply_rule", "count_rule", "find_rule", "rule"]
