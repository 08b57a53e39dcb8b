"""The sweep's self-contained HTML page: quality against latency, parameters or MACs for
every configuration, the Pareto front marked, and a table of the runs.

Like the report page (`inspect.html`) the data is embedded as JSON and
`templates/pareto.html` draws it with inline JS and SVG: no network, nothing
time-dependent, byte-identical for the same sweep.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from .html import embed_json

_PLACEHOLDER = "__SWEEP_DATA__"
AXES = [
    ["latency_ms", "measured latency (ms)"],
    ["params", "parameters"],
    ["macs", "MACs"],
]


@cache
def _template() -> str:
    template = resources.files("graphprune.inspect").joinpath("templates/pareto.html")
    return template.read_text("utf-8")


def pareto_html(sweep: dict) -> str:
    """The page of a sweep result (`graphprune sweep`'s JSON)."""
    axes = [axis for axis in AXES if any(r.get(axis[0]) is not None for r in sweep["runs"])]
    data = {
        "model": sweep["model"],
        "quality": sweep["quality"],
        "latency_on": sweep.get("latency_on", "-"),
        "axes": axes or AXES[1:],
        "runs": sweep["runs"],
    }
    return _template().replace(_PLACEHOLDER, embed_json(data), 1)


def pareto_front(runs: list[dict], key: str) -> list[str]:
    """Labels of the runs no other run beats on both `key` (lower) and quality (higher)."""
    scored = [r for r in runs if r.get("quality") is not None and r.get(key) is not None]
    return [
        r["label"]
        for r in scored
        if not any(
            o is not r
            and o[key] <= r[key]
            and o["quality"] >= r["quality"]
            and (o[key] < r[key] or o["quality"] > r["quality"])
            for o in scored
        )
    ]
