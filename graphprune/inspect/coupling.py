"""A group's part of the coupling graph as an inline SVG, for the HTML report's group view.

The same drawing as `tools/draw_coupling.py`, without matplotlib: the group's channel
owners in graph order on one row, an arc per pair of owners coupled (labelled with the
node that coupled them, or "Op xN" for several statements), and the couplings of one
owner's own positions (attention heads) above it. Full names, rules and positions are in
each element's tooltip. Coordinates are integers, so the same analysis gives the same text.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from html import escape

from ..core.analysis import Analysis

MAX_OWNERS = 40  # wider groups are cut, with a note
_STEP, _LEFT, _ROW = 180, 90, 78
_COLORS = {"channels": "#4e79a7", "mlp": "#59a14f", "heads": "#f28e2b", "hidden": "#e15759",
           "experts": "#b07aa1", "blocks": "#76b7b2"}  # fmt: skip


def coupling_svgs(analysis: Analysis) -> dict[str, str]:
    """group id (as a string, a JSON key) -> SVG, for the groups with a coupling."""
    return {
        str(group.id): coupling_svg(analysis, group.id)
        for group in analysis.groups
        if analysis.coupling_graph(group.id).number_of_edges()
    }


def _short(name, parts: int, op: bool) -> str:
    if not isinstance(name, str):
        return f"untracked {name}"
    pieces = [p for p in name.strip("/").split("/") if p]
    if not op and len(pieces) > 1:
        pieces = pieces[:-1]
    return "/".join(pieces[-parts:])


def _text(x: int, y: int, text: str, size: int = 10, extra: str = "") -> str:
    return (
        f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="middle"{extra}>'
        f"{escape(text)}</text>"
    )


def coupling_svg(analysis: Analysis, group_id: int) -> str:
    part = analysis.coupling_graph(group_id)
    position = analysis.view.position
    owners = sorted(part, key=lambda n: (position.get(n, len(position)), str(n)))
    shown = owners[:MAX_OWNERS]
    column = {owner: i for i, owner in enumerate(shown)}
    pairs: dict[tuple[int, int], list[dict]] = defaultdict(list)
    loops: dict[int, list[dict]] = defaultdict(list)
    for u, v, data in part.edges(data=True):
        if u in column and v in column:
            a, b = sorted((column[u], column[v]))
            (loops[a] if a == b else pairs[(a, b)]).append(data)
    hops = max((b - a for a, b in pairs), default=1)
    top = 34 + 14 * hops
    y = top + _ROW // 2
    width = _LEFT * 2 + _STEP * (len(shown) - 1)
    items = []
    for (a, b), made in sorted(pairs.items()):
        x0, x1 = _LEFT + _STEP * a, _LEFT + _STEP * b
        lift = 0 if b - a == 1 else 28 * (b - a)
        middle = (x0 + x1) // 2
        ops = Counter(d["op"] for d in made)
        label = (
            _short(made[0]["node"], 2, op=True)
            if len(made) == 1
            else ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
        )
        tip = "; ".join(f"{d['node']} ({d['op']}, {d['rule']}): {d['positions']}" for d in made)
        items.append(
            f'<path d="M {x0} {y} Q {middle} {y - lift} {x1} {y}" fill="none" '
            f'stroke="#666" stroke-width="1.3"><title>{escape(tip)}</title></path>'
        )
        items.append(_text(middle, y - lift // 2 - 6, label, 9))
    for index, owner in enumerate(shown):
        data = part.nodes[owner]
        x = _LEFT + _STEP * index
        color = _COLORS.get(data.get("kind", ""), "#bab0ac")
        tip = f"{owner}: {data['op']}, {data['channels']} channel(s)"
        items.append(
            f'<circle cx="{x}" cy="{y}" r="8" fill="{color}"><title>{escape(tip)}</title></circle>'
        )
        items.append(_text(x, y + 22, _short(owner, 2, op=False)))
        items.append(_text(x, y + 35, f"{data['op']}, {data['channels']} ch", 9))
        if index in loops:
            ops = Counter(d["op"] for d in loops[index])
            within = "within: " + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
            items.append(_text(x, y - 14, within, 9, ' fill="#a05a00"'))
    if len(owners) > len(shown):
        items.append(_text(width // 2, 14, f"first {len(shown)} of {len(owners)} owners", 10))
    height = y + 46
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="coupling" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">' + "".join(items) + "</svg>"
    )
