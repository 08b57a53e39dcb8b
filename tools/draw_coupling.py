"""Draw a model's coupling graph (`Analysis.coupling_graph()`): one row per group, its
channel owners in graph order, an arc per coupling labelled with the node that made it
(several statements of one op between two owners: "Op xN"); couplings of one owner's
own positions (attention heads) are listed under it. Needs matplotlib (`pip install
matplotlib`; graphprune itself does not).

    python tools/draw_coupling.py MODEL OUT.png [--approximate-norms] [--all] [--title T]

The README's pictures (docs/coupling-resnet18.png, docs/coupling-bert.png):

    python tools/draw_coupling.py "$GRAPHPRUNE_ZOO_CACHE"/resnet18.classic.*.onnx \
        docs/coupling-resnet18.png --title "ResNet-18 (zoo, classic export)"
    python tools/draw_coupling.py "$GRAPHPRUNE_ZOO_CACHE"/tx-bert.classic.*.onnx \
        docs/coupling-bert.png --approximate-norms --title "BERT, 2 layers (transformers)"
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

import graphprune as gp  # noqa: E402

COLORS = {"channels": "#4e79a7", "mlp": "#59a14f", "heads": "#f28e2b", "hidden": "#e15759",
          "experts": "#b07aa1", "blocks": "#76b7b2", "": "#bab0ac"}  # fmt: skip


def short(name: str, parts: int, op: bool = True) -> str:
    """The last `parts` path parts of a node name, on two lines when long; `op=False`
    drops its op part ('/a/b/c/Conv' -> 'b/c')."""
    pieces = [p for p in str(name).strip("/").split("/") if p]
    if not op and len(pieces) > 1:
        pieces = pieces[:-1]
    pieces = pieces[-parts:]
    half = (len(pieces) + 1) // 2
    if len("/".join(pieces)) > 24 and len(pieces) > 1:
        return "/".join(pieces[:half]) + "/\n" + "/".join(pieces[half:])
    return "/".join(pieces)


def rows(analysis: gp.Analysis, every: bool) -> list[tuple[gp.Group, list]]:
    """(group, its owners in graph order) for the groups drawn."""
    graph, position = analysis.coupling_graph(), analysis.view.position
    found = []
    for group in analysis.groups:
        part = analysis.coupling_graph(group.id)
        if every or part.number_of_edges():
            owners = sorted(part, key=lambda n: (position.get(n, len(position)), str(n)))
            found.append((group, owners))
    del graph
    return found


def draw(analysis: gp.Analysis, out: Path, title: str, every: bool) -> None:
    drawn = rows(analysis, every)
    graph = analysis.coupling_graph()
    width = max(len(owners) for _, owners in drawn)
    figure, axes = plt.subplots(figsize=(2.3 * width + 1.5, 1.6 * len(drawn) + 0.8))
    where = {}
    for row, (group, owners) in enumerate(drawn):
        y = -row
        status = "prunable" if group.prunable else "kept"
        axes.text(-0.9, y, f"group {group.id}\n{group.kind}, {group.channels} ch\n{status}",
                  ha="right", va="center", fontsize=8)  # fmt: skip
        for column, owner in enumerate(owners):
            where[owner] = (column * 2.0, y)
    for u, v in {tuple(sorted((u, v), key=str)) for u, v in graph.edges() if u != v}:
        if u not in where or v not in where:
            continue
        made = [d for d in graph.get_edge_data(u, v).values()]
        ops = Counter(d["op"] for d in made)
        label = (short(made[0]["node"], 3) if len(made) == 1
                 else ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())))  # fmt: skip
        (x0, y0), (x1, y1) = sorted((where[u], where[v]))
        hops = round((x1 - x0) / 2.0)
        bend = 0.0 if hops <= 1 else -0.25
        axes.annotate("", xy=(x1, y1), xytext=(x0, y0),
                      arrowprops={"arrowstyle": "-", "color": "#555555", "lw": 1.2,
                                  "connectionstyle": f"arc3,rad={bend}", "shrinkA": 14,
                                  "shrinkB": 14})  # fmt: skip
        axes.text((x0 + x1) / 2, y0 + (0.08 if hops <= 1 else 0.12 + 0.22 * hops / 2),
                  label, ha="center", va="bottom", fontsize=6.5, color="#333333")  # fmt: skip
    loops: dict[object, Counter] = defaultdict(Counter)
    for u, _, data in nx.selfloop_edges(graph, data=True):
        loops[u][data["op"]] += 1
    for owner, (x, y) in where.items():
        data = graph.nodes[owner]
        name = short(owner, 4, op=False) if isinstance(owner, str) else f"untracked {owner}"
        axes.scatter([x], [y], s=260, color=COLORS.get(data.get("kind", ""), "#bab0ac"),
                     zorder=3, edgecolors="white")  # fmt: skip
        axes.text(x, y - 0.17, f"{name}\n{data['op']}, {data['channels']} ch", ha="center",
                  va="top", fontsize=6.5)  # fmt: skip
        if owner in loops:
            within = ", ".join(f"{op} x{n}" for op, n in sorted(loops[owner].items()))
            axes.text(x, y + 0.17, f"within: {within}", ha="center", va="bottom", fontsize=6,
                      color="#a05a00")  # fmt: skip
    hidden = len(analysis.groups) - len(drawn)
    note = f" ({hidden} groups of one owner and no coupling not shown)" if hidden else ""
    axes.set_title(f"{title}: coupling graph, a row per group{note}", fontsize=9)
    axes.set_xlim(-2.6, 2.0 * (width - 1) + 1.0)
    axes.set_ylim(-len(drawn) + 0.4, 0.9)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path, help="a .png or .svg path")
    parser.add_argument("--approximate-norms", action="store_true")
    parser.add_argument("--all", action="store_true", help="groups without couplings too")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    analysis = gp.analyze(gp.load(args.model), approximate_norms=args.approximate_norms)
    draw(analysis, args.out, args.title or Path(args.model).name, args.all)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
