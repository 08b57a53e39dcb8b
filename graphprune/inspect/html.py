"""Self-contained HTML reports: a diff of two models, or the groups of one model.

The page is one file a reviewer can open offline or attach to a pipeline run: the data is
embedded as JSON and `templates/report.html` renders it with inline CSS, JS and SVG (a
per-layer width chart, a sortable and filterable layer table, the group view with each
group's part of the coupling graph, drawn by `coupling.py`). Nothing is
fetched from the network and nothing time-dependent is written, so the same inputs give a
byte-identical file.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import onnx

from ..core.analysis import Analysis
from ..core.metrics import count_params
from .attribution import attribute_with_analysis
from .coupling import coupling_svgs
from .layers import describe
from .report import analysis_json, groups_json

_PLACEHOLDER = "__REPORT_DATA__"


@cache
def _template() -> str:
    template = resources.files("graphprune.inspect").joinpath("templates/report.html")
    return template.read_text("utf-8")


def render(data: dict) -> str:
    """The report page for `data` (a diff result with "mode": "diff", or analysis data)."""
    return _template().replace(_PLACEHOLDER, embed_json(data), 1)


def embed_json(data: dict) -> str:
    """`data` as JSON that is safe inside a <script> element, keys sorted."""
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    # Inside <script> only "<" can end the element early; the escapes keep it valid JSON.
    return payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def diff_html(result: dict) -> str:
    """The report of `graphprune.diff.diff_models`'s result."""
    return render({"mode": "diff", **result})


def analysis_html(analysis: Analysis, label: str) -> str:
    """One model's groups and layers: which nodes each group's channels edit, and why the
    groups that cannot be pruned are kept."""
    model: onnx.ModelProto = analysis.view.model
    every_channel = {
        "groups": [
            {"name": g.name, "channels": g.channels, "removed": list(range(g.channels))}
            for g in analysis.groups
        ]
    }
    owners = attribute_with_analysis(analysis, every_channel)
    described = describe(model)
    layers = [
        {**layer.to_json(), "groups": owners.get(layer.name, [])} for layer in described.layers
    ]
    summary = analysis_json(analysis)
    summary.pop("group_list")
    return render({
        "mode": "analysis",
        "model": label,
        "summary": summary,
        "params": count_params(model),
        "macs": int(sum(layer.macs for layer in described.layers)),
        "layers": layers,
        "groups": groups_json(analysis),
        "coupling": coupling_svgs(analysis),
    })  # fmt: skip
