"""The networkx views: the graph model (`GraphView.graph`: order, cycles, reachability) and
the coupling graph (`Analysis.coupling_graph()`, `graphprune analyze --graph`), whose
connected components are the groups and whose edges say which rule coupled what."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from oracle import GraphBuilder

import graphprune as gp
from graphprune.cli import main
from graphprune.core.graph import SUBGRAPH_READ, GraphView, value_node
from graphprune.core.rules.registry import COUNT_RULES, INDEX_RULES, RULES
from graphprune.inspect.coupling import coupling_svgs
from graphprune.inspect.html import analysis_html
from models.export import cached as zoo_model
from models.transformers_zoo import cached as transformer_model

RULE_NAMES = {
    f"{f.__module__.rpartition('.')[2]}.{f.__name__}"
    for table in (RULES, COUNT_RULES, INDEX_RULES)
    for f in table.values()
} | {"blocks.units"}


def untracked_concat() -> onnx.ModelProto:
    """Conv a (4 channels) concatenated with the input (3 untracked channels) and added to
    conv b (7 channels): the input's positions are untracked owners coupled with b's."""
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    a = g.conv(x, 3, 4)
    joined = g.op("Concat", [a, x], axis=1)
    b = g.conv(x, 3, 7)
    g.output(g.conv(g.op("Relu", [g.op("Add", [joined, b])]), 7, 2))
    return g.model()


def check_components_are_groups(analysis: gp.Analysis) -> None:
    graph = analysis.coupling_graph()
    view = analysis.view
    by_sources = {frozenset(g.sources): g for g in analysis.groups}
    found = set()
    for component in nx.connected_components(graph):
        sources = frozenset(n for n in component if isinstance(n, str))
        groups = {graph.nodes[n]["group"] for n in component}
        if not sources:  # untracked positions coupled with nobody's channels
            assert groups == {-1}
            continue
        group = by_sources[sources]
        assert groups == {group.id}
        assert {graph.nodes[n]["kind"] for n in component} == {group.kind}
        found.add(sources)
    assert found == set(by_sources)
    for _, _, data in graph.edges(data=True):
        assert view.nodes[data["node"]].op_type == data["op"]
        assert data["rule"] in RULE_NAMES
        assert data["positions"] >= 1


@pytest.mark.parametrize(
    "build",
    [
        lambda: zoo_model("resnet18", "dynamo"),
        lambda: zoo_model("densenet", "classic"),
        lambda: transformer_model("bert", "dynamo"),
        lambda: transformer_model("llama", "dynamo"),
        untracked_concat,
    ],
    ids=["resnet18", "densenet", "bert", "llama", "untracked-concat"],
)
def test_components_of_the_coupling_graph_are_the_groups(build):
    model = gp.load(build())
    check_components_are_groups(gp.analyze(model))
    check_components_are_groups(gp.analyze(model, blocks="layer"))


def test_the_coupling_graph_says_why():
    analysis = gp.analyze(gp.load(zoo_model("resnet18", "dynamo")))
    graph = analysis.coupling_graph()
    # ResNet: the convs that feed a stage's residual Adds are one group, joined by the Adds.
    widest = max(analysis.groups, key=lambda g: len(g.sources))
    part = analysis.coupling_graph(widest.id)
    assert set(part) == set(widest.sources) and len(widest.sources) >= 3
    assert {(d["op"], d["rule"]) for _, _, d in part.edges(data=True)} == {
        ("Add", "elementwise.broadcast")
    }
    assert all(d["positions"] == widest.channels for _, _, d in part.edges(data=True))
    assert nx.is_connected(part)
    # A group of one conv has no coupling edge.
    alone = next(g for g in analysis.groups if len(g.sources) == 1)
    assert graph.degree(alone.sources[0]) == 0

    untracked = gp.analyze(gp.load(untracked_concat())).coupling_graph()
    atoms = [n for n in untracked if not isinstance(n, str)]
    assert len(atoms) == 3  # the input's three channels, each coupled with one of b's
    assert all(untracked.nodes[a]["untracked"] for a in atoms)
    assert {untracked.nodes[a]["op"] for a in atoms} == {"Concat"}
    assert {d["op"] for _, _, d in untracked.edges(data=True)} == {"Add"}


def test_heads_couple_within_one_owner():
    """Attention heads: the rule couples each head's positions of one projection, a
    self-loop that says which node made the head structure."""
    analysis = gp.analyze(gp.load(transformer_model("bert", "dynamo")))
    graph = analysis.coupling_graph()
    heads = [g for g in analysis.groups if g.kind == "heads"]
    assert heads
    for group in heads:
        part = analysis.coupling_graph(group.id)
        loops = list(nx.selfloop_edges(part, data=True))
        assert loops, f"no head coupling recorded in {group.name}"
        assert all(d["rule"].startswith(("attention.", "reshape.")) for _, _, d in loops)
    assert graph.number_of_edges() > 0


@pytest.mark.parametrize("suffix", [".json", ".graphml"])
def test_analyze_writes_the_coupling_graph(tmp_path, capsys, suffix):
    model = zoo_model("resnet18", "classic")
    out = tmp_path / f"coupling{suffix}"
    assert main(["analyze", str(model), "--graph", str(out)]) == 0
    capsys.readouterr()
    analysis = gp.analyze(gp.load(model))
    if suffix == ".json":
        read = nx.node_link_graph(json.loads(out.read_text()), edges="edges")
    else:
        read = nx.read_graphml(out, force_multigraph=True)
    expected = analysis.coupling_graph()
    assert read.number_of_nodes() == expected.number_of_nodes()
    assert read.number_of_edges() == expected.number_of_edges()
    labels = sorted(data["label"] for _, data in read.nodes(data=True))
    assert labels == sorted(expected)
    groups = {read.nodes[n]["group"] for c in nx.connected_components(read) for n in c}
    assert groups == {g.id for g in analysis.groups}
    # Same analysis, same bytes.
    again = tmp_path / f"again{suffix}"
    assert main(["analyze", str(model), "--graph", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_analyze_refuses_another_graph_format(tmp_path, capsys):
    out = tmp_path / "coupling.png"
    assert main(["analyze", str(zoo_model("resnet18", "classic")), "--graph", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ".graphml or .json" in err
    assert not out.exists()


def chain(names_in_file_order: list[str], cyclic: bool = False) -> onnx.ModelProto:
    """x -> a -> b -> c -> y, the nodes written in the given order; `cyclic`: a reads c."""
    reads = {"a": "c" if cyclic else "x", "b": "a", "c": "b"}
    nodes = [
        helper.make_node("Relu", [reads[name]], [name], name=f"n{name}")
        for name in names_in_file_order
    ]
    nodes.append(helper.make_node("Identity", ["c"], ["y"], name="ny"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "chain", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_order_is_topological_and_follows_the_file_where_it_can():
    view = GraphView(chain(["c", "a", "b"]), shapes=False)
    assert [n.name for n in view.order] == ["na", "nb", "nc", "ny"]
    view = GraphView(chain(["a", "b", "c"]), shapes=False)
    assert [n.name for n in view.order] == ["na", "nb", "nc", "ny"]
    # The structure: ONNX nodes and values, an edge per read keyed (tensor, input index).
    assert set(view.graph.successors(value_node("x"))) == {"na"}
    assert view.graph.has_edge("na", "nb", key=("a", 0))
    assert view.graph.edges["na", "nb", ("a", 0)]["output"] == 0


def test_a_cycle_is_a_one_line_error_naming_it(tmp_path, capsys):
    view = GraphView(chain(["a", "b", "c"], cyclic=True), shapes=False)
    with pytest.raises(gp.GraphpruneError, match=r"cycle: 'n[abc]' -> 'n[abc]' -> 'n[abc]' ->"):
        _ = view.order
    path = tmp_path / "cyclic.onnx"
    onnx.save(chain(["a", "b", "c"], cyclic=True), path)
    assert main(["analyze", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cycle" in err and "'na'" in err


def test_subgraph_reads_are_edges():
    """A tensor read inside an If branch is an edge to the If, at input index -1."""
    then = helper.make_graph(
        [helper.make_node("Relu", ["t"], ["r"], name="inner")],
        "then", [], [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["s"], name="inner2")],
        "else", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["t"], name="make"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x, cond], [y]),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    view = GraphView(model, shapes=False)
    uses = {(node.name, index) for node, index in view.consumers("t")}
    assert uses == {("branch", SUBGRAPH_READ), ("inner", 0), ("inner2", 0)}
    assert view.graph.has_edge("make", "branch", key=("t", SUBGRAPH_READ))
    # Body nodes are walked by the node that holds them, not ordered with the main graph.
    assert [n.name for n in view.order] == ["make", "branch"]


def test_a_shuffled_file_gives_a_topological_order_and_the_same_groups():
    model = gp.load(transformer_model("bert", "classic"))
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    np.random.default_rng(0).shuffle(nodes)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    view = GraphView(shuffled)
    made = set(view.graph_inputs) | set(view.initializers)
    for node in view.order:
        assert all(name in made for name in node.input if name), node.name
        made.update(node.output)
    assert len(view.order) == len(nodes)
    before, after = gp.analyze(model), gp.analyze(shuffled)
    assert [sorted(g.sources) for g in after.groups] == [sorted(g.sources) for g in before.groups]


def test_the_html_group_view_draws_each_coupled_group():
    analysis = gp.analyze(gp.load(transformer_model("bert", "classic")), approximate_norms=True)
    svgs = coupling_svgs(analysis)
    coupled = [g for g in analysis.groups if analysis.coupling_graph(g.id).number_of_edges()]
    assert sorted(svgs) == sorted(str(g.id) for g in coupled) and coupled
    for group in coupled:
        part = analysis.coupling_graph(group.id)
        drawing = ET.fromstring(svgs[str(group.id)])
        tag = "{http://www.w3.org/2000/svg}"
        assert len(drawing.findall(f"{tag}circle")) == part.number_of_nodes()
        pairs = {frozenset((u, v)) for u, v in part.edges() if u != v}
        assert len(drawing.findall(f"{tag}path")) == len(pairs)
        tips = " ".join(t.text for t in drawing.iter(f"{tag}title"))
        assert all(data["node"] in tips for u, v, data in part.edges(data=True) if u != v)
    page = analysis_html(analysis, "bert.onnx")
    assert page.count("why coupled") == 1  # the template's toggle, once
    embedded = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page)
    assert json.loads(embedded.group(1))["coupling"] == svgs
