"""`graphprune diff`: what changed between two ONNX models, layer by layer.

Built for two uses: a person checking what pruning did before shipping it, and a pipeline
gating on it. Both models are loaded the way `graphprune prune` loads them (so the diff of
a model and its pruned version shows what pruning did, not what constant folding did),
their nodes are matched (names, then structure: `graphprune.matching`), and each matched
pair's facts (`graphprune.layers`) are compared. Names are not facts: renaming nodes or
tensors is no structural change. The result is one JSON-ready dict with no timestamps or
machine-dependent fields except the optional validation's execution provider, so the same
inputs give byte-identical reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx

from ..core.analysis import Analysis, AnalysisOptions, analyze_view
from ..core.graph import GraphView
from ..core.metrics import count_params
from ..io.loading import load_model
from ..runtime.sessions import execution_provider, run, session
from ..runtime.validation import deviation
from .attribution import attribute, group_view, recorded_plan
from .layers import Layer, ModelLayers, describe
from .matching import match

Source = str | os.PathLike | onnx.ModelProto


def diff_models(
    before: Source,
    after: Source,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    analysis: Analysis | None = None,
    analyze: Callable[[onnx.ModelProto], Analysis] | None = None,
    labels: tuple[str, str] | None = None,
) -> dict:
    """The structural diff of two models (paths or ModelProtos).

    `input_shapes` fixes symbolic input dims for the MAC counts; `feeds` runs both models
    in onnxruntime and adds each output's deviation. When `after` carries a graphprune plan,
    changes are attributed to groups with `analysis` (of `before`), else with `analyze`
    (called on the loaded `before`), else by tracing the plan's sources. `labels` name the
    models in the report (default: their paths)."""
    model_a, model_b = load_model(before), load_model(after)
    a, b = describe(model_a, input_shapes), describe(model_b, input_shapes)
    pairs = match(a, b)
    mapped = dict(pairs)
    layers = [_compare(a, b, a.layers[i], b.layers[j], mapped) for i, j in pairs]
    matched_b = set(mapped.values())
    removed = [x for x in a.layers if x.index not in mapped]
    added = [y for y in b.layers if y.index not in matched_b]

    plan = recorded_plan(model_b)
    if plan is not None and plan == recorded_plan(model_a):
        plan = None  # A carries the same plan: B was not pruned from A
    groups = group_view(plan) if plan else []
    method = None
    if plan is not None:
        changed = [i for (i, _), row in zip(pairs, layers, strict=True) if row["changed"]]
        changed += [x.index for x in removed]

        def run_analysis() -> Analysis:
            if analyze is not None:
                return analyze(model_a)
            recorded = plan.get("options", {})
            options = AnalysisOptions(
                approximate_norms=bool(recorded.get("approximate_norms")),
                approximate_dynamic_quant=bool(recorded.get("approximate_dynamic_quant")),
            )
            return analyze_view(GraphView(model_a), options=options)

        owners, method = attribute(a, plan, changed, analysis, run_analysis)
        by_group = {g["name"]: g for g in groups}
        for row in layers:
            row["groups"] = owners.get(row["name"], [])
            for name in row["groups"]:
                if name in by_group:
                    by_group[name]["layers"].append(row["name"])

    result = {
        "before": _summary(labels[0] if labels else before, a),
        "after": _summary(labels[1] if labels else after, b),
        "layers": layers,
        "removed": [_layer_json(x) for x in removed],
        "added": [_layer_json(y) for y in added],
        "weights": _changed_weights(a, b, pairs),
        "initializers": _initializers(model_a, model_b),
        "outputs": _outputs(a, b),
        "plan": plan.get("options") if plan else None,
        "groups": groups,
        "attribution": method,
        "validation": _validate(model_a, model_b, feeds) if feeds is not None else None,
    }
    result["totals"] = _totals(result, a, b)
    return result


def structural_changes(result: dict) -> int:
    """How many layers were changed, added or removed (0: the same structure)."""
    totals = result["totals"]
    return totals["changed"] + totals["added"] + totals["removed"]


def _compare(a: ModelLayers, b: ModelLayers, x: Layer, y: Layer, mapped: dict[int, int]) -> dict:
    before, after = x.facts(), y.facts()
    changes = []
    for key in before:
        if key == "attributes":
            names = sorted(set(before[key]) | set(after[key]))
            changes += [f"attribute {n}" for n in names if before[key].get(n) != after[key].get(n)]
        elif before[key] != after[key]:
            changes.append(key.replace("_", " "))
    if not _same_wiring(a, b, x, y, mapped):
        changes.append("inputs")
    return {
        "name": x.name,
        "name_after": y.name,
        "op": _layer_json(x)["op"],
        "changed": bool(changes),
        "changes": changes,
        "groups": [],
        "before": _facts_json(x),
        "after": _facts_json(y),
    }


def _same_wiring(a: ModelLayers, b: ModelLayers, x: Layer, y: Layer, mapped) -> bool:
    """Each input comes from the matched producer's same output (or the same kind of
    source: a constant, or the same graph input position)."""
    if len(x.inputs) != len(y.inputs):
        return False
    for name_a, name_b in zip(x.inputs, y.inputs, strict=True):
        if _source_kind(a, name_a) != _source_kind(b, name_b):
            return False
        source_a, source_b = a.producer.get(name_a), b.producer.get(name_b)
        if (
            source_a
            and source_b
            and name_a not in a.constants
            and (mapped.get(source_a[0]) != source_b[0] or source_a[1] != source_b[1])
        ):
            return False
    return True


def _source_kind(model: ModelLayers, name: str) -> tuple:
    if not name:
        return ("none",)
    if name in model.constants:
        return ("constant",)
    if name in model.producer:
        return ("node",)
    if name in model.graph_inputs:
        return ("input", model.graph_inputs.index(name))
    return ("unknown",)


def _layer_json(layer: Layer) -> dict:
    return layer.to_json()


def _facts_json(layer: Layer) -> dict:
    return {k: v for k, v in layer.to_json().items() if k not in ("name", "op")}


def _summary(source: Source, model: ModelLayers) -> dict:
    return {
        "model": str(source) if not isinstance(source, onnx.ModelProto) else "<in memory>",
        "nodes": len(model.layers),
        "params": count_params(model.model),
        "macs": int(sum(layer.macs for layer in model.layers)),
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
    }


def _changed_weights(a: ModelLayers, b: ModelLayers, pairs) -> list[dict]:
    """Every constant input whose shape or small integer value changed, by layer."""
    rows = []
    for i, j in pairs:
        before = {w["input"]: w for w in a.layers[i].weights}
        after = {w["input"]: w for w in b.layers[j].weights}
        for slot in sorted(set(before) | set(after)):
            x, y = before.get(slot), after.get(slot)
            if x and y and x["shape"] == y["shape"] and x.get("value") == y.get("value"):
                continue
            rows.append({"layer": a.layers[i].name, "input": slot, "before": x, "after": y})
    return rows


def _initializers(model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> dict:
    """Initializers by name: reshaped, only before, only after (pruning copies a shared
    constant it edits under a new name, so 'added' is not necessarily new weights)."""
    shapes_a = {t.name: list(t.dims) for t in model_a.graph.initializer}
    shapes_b = {t.name: list(t.dims) for t in model_b.graph.initializer}
    return {
        "reshaped": [
            {"name": n, "before": shapes_a[n], "after": shapes_b[n]}
            for n in sorted(shapes_a)
            if n in shapes_b and shapes_a[n] != shapes_b[n]
        ],
        "removed": sorted(set(shapes_a) - set(shapes_b)),
        "added": sorted(set(shapes_b) - set(shapes_a)),
    }


def _outputs(a: ModelLayers, b: ModelLayers) -> list[dict]:
    """Graph outputs by position with their inferred shapes."""
    shapes_a = {o: s for x in a.layers for o, s in zip(x.outputs, x.output_shapes, strict=True)}
    shapes_b = {o: s for y in b.layers for o, s in zip(y.outputs, y.output_shapes, strict=True)}
    rows = []
    for k in range(max(len(a.graph_outputs), len(b.graph_outputs))):
        name_a = a.graph_outputs[k] if k < len(a.graph_outputs) else None
        name_b = b.graph_outputs[k] if k < len(b.graph_outputs) else None
        shape_a, shape_b = shapes_a.get(name_a or ""), shapes_b.get(name_b or "")
        rows.append({
            "name": name_a, "name_after": name_b, "shape_before": shape_a,
            "shape_after": shape_b, "changed": name_a is None or name_b is None
            or shape_a != shape_b,
        })  # fmt: skip
    return rows


def _validate(model_a: onnx.ModelProto, model_b: onnx.ModelProto, feeds) -> dict:
    """Run both on the same inputs; outputs are compared by position (names may differ)."""
    provider = execution_provider()
    session_a, session_b = session(model_a, provider), session(model_b, provider)
    outputs_a, outputs_b = run(session_a, feeds), run(session_b, feeds)
    rows = []
    for meta, x, y in zip(session_a.get_outputs(), outputs_a, outputs_b, strict=False):
        row = {"name": meta.name, "shape_before": list(x.shape), "shape_after": list(y.shape)}
        if x.shape == y.shape:
            row.update(deviation(x, y))  # None where not finite: JSON has no NaN either
        else:
            row.update({"max_abs": None, "max_rel": None})
        rows.append(row)
    return {"execution_provider": provider, "outputs": rows}


def _totals(result: dict, a: ModelLayers, b: ModelLayers) -> dict:
    layers = result["layers"]

    def before_after(key: str) -> dict:
        x, y = result["before"][key], result["after"][key]
        fraction = round(1 - y / x, 6) if x else 0.0
        return {"before": x, "after": y, "removed_fraction": fraction}

    return {
        "nodes": {"before": len(a.layers), "after": len(b.layers)},
        "matched": len(layers),
        "changed": sum(1 for row in layers if row["changed"]),
        "removed": len(result["removed"]),
        "added": len(result["added"]),
        "renamed": sum(1 for row in layers if row["name"] != row["name_after"]),
        "weights_changed": len(result["weights"]),
        "params": before_after("params"),
        "macs": before_after("macs"),
        "outputs_changed": sum(1 for row in result["outputs"] if row["changed"]),
    }
