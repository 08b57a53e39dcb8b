"""`graphprune diff`: pruned zoo pairs show every reshaped weight with its group, identical
and renamed copies show no structural change, and the CLI writes reproducible JSON/HTML."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from bench_diff import renamed

import graphprune as gp
from graphprune.cli import main
from graphprune.core.metrics import count_params
from graphprune.inspect.diff import diff_models, structural_changes
from graphprune.runtime.inputs import random_inputs
from models.export import cached
from models.zoo import ZOO

PRUNED_CASES = [
    ("resnet_tiny", "dynamo"), ("mobilenetv2", "classic"), ("densenet", "dynamo"),
    ("shufflenetv2", "classic"), ("inception", "dynamo"), ("regnet", "classic"),
]  # fmt: skip
ALL_CASES = [(name, exporter) for name in ZOO for exporter in ("dynamo", "classic")]


def pruned_pair(name: str, exporter: str):
    model = gp.load(cached(name, exporter))
    analysis = gp.analyze(model)
    return model, analysis, gp.prune(analysis, gp.plan(analysis, 0.5))


@pytest.mark.parametrize("name,exporter", PRUNED_CASES, ids=[f"{n}-{e}" for n, e in PRUNED_CASES])
def test_pruned_pair_shows_every_reshaped_weight_and_its_group(name, exporter):
    model, analysis, pruned = pruned_pair(name, exporter)
    result = diff_models(model, pruned, analysis=analysis)
    shapes_a = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes_b = {t.name: list(t.dims) for t in pruned.graph.initializer}
    before_names = {w["before"]["name"] for w in result["weights"] if w["before"]}
    after_names = {w["after"]["name"] for w in result["weights"] if w["after"]}
    reshaped = {n for n in shapes_a if n in shapes_b and shapes_a[n] != shapes_b[n]}
    assert reshaped <= before_names
    assert reshaped == {r["name"] for r in result["initializers"]["reshaped"]}
    copies = {n for n in shapes_b if n not in shapes_a}  # shared constants pruning copied
    assert copies <= after_names
    assert not result["added"] and not result["removed"]

    rows = {row["name"]: row for row in result["layers"]}
    for group in result["groups"]:
        if group["removed"]:
            for source in group["sources"]:
                # A source owning only kept classes of its group (a Concat input) stays.
                row = rows[source]
                if row["before"]["out_channels"] != row["after"]["out_channels"]:
                    assert group["name"] in row["groups"], source
    for row in result["layers"]:
        if row["op"] in ("Conv", "Gemm") and row["changed"]:
            assert row["groups"], f"{row['name']} changed without a group"
    totals = result["totals"]
    assert totals["params"]["after"] == count_params(pruned)
    assert totals["macs"]["after"] < totals["macs"]["before"]
    assert result["attribution"] == "analysis"


def test_identical_models_have_no_changed_layer():
    path = cached("resnet_tiny", "classic")
    result = diff_models(path, path)
    assert not any(row["changed"] for row in result["layers"])
    assert structural_changes(result) == 0 and result["totals"]["renamed"] == 0


@pytest.mark.parametrize("name,exporter", ALL_CASES, ids=[f"{n}-{e}" for n, e in ALL_CASES])
def test_renamed_copy_has_no_structural_change(name, exporter):
    model = onnx.load(cached(name, exporter))
    result = diff_models(model, renamed(model))
    assert structural_changes(result) == 0, [r["changes"] for r in result["layers"]][:5]
    totals = result["totals"]
    assert totals["renamed"] == totals["matched"] == totals["nodes"]["before"]


def test_renamed_pruned_pair_matches_by_structure():
    model, analysis, pruned = pruned_pair("resnet_bottleneck", "classic")
    by_name = diff_models(model, pruned, analysis=analysis)
    by_structure = diff_models(model, renamed(pruned), analysis=analysis)
    assert by_structure["totals"]["renamed"] == by_structure["totals"]["matched"]
    assert [(r["name"], r["changes"], r["groups"]) for r in by_name["layers"]] == [
        (r["name"], r["changes"], r["groups"]) for r in by_structure["layers"]
    ]


def test_inserted_node_is_the_only_addition():
    model = onnx.load(cached("resnet_tiny", "dynamo"))
    changed = renamed(model)
    position, relu = next((i, n) for i, n in enumerate(changed.graph.node) if n.op_type == "Relu")
    old = relu.output[0]
    for node in changed.graph.node:
        node.input[:] = ["inserted" if name == old else name for name in node.input]
    extra = onnx.helper.make_node("Identity", [old], ["inserted"], "extra")
    changed.graph.node.insert(position + 1, extra)
    result = diff_models(model, changed)
    assert [n["name"] for n in result["added"]] == ["extra"] and not result["removed"]
    assert result["totals"]["matched"] == result["totals"]["nodes"]["before"]
    rewired = [r["changes"] for r in result["layers"] if r["changed"]]
    assert rewired and all(changes == ["inputs"] for changes in rewired)


def test_attribution_without_analysis_traces_sources():
    model, _, pruned = pruned_pair("vgg", "classic")
    result = diff_models(model, pruned, analyze=lambda _: (_ for _ in ()).throw(
        gp.GraphpruneError("no analysis")))  # fmt: skip
    assert result["attribution"] == "tracing"
    assert all(row["groups"] for row in result["layers"] if row["changed"])


def test_cli_diff_json_html_deterministic_and_exit_code(tmp_path, capsys):
    source = cached("resnet_tiny", "classic")
    pruned = tmp_path / "pruned.onnx"
    assert main(["prune", str(source), "-o", str(pruned), "--ratio", "0.5", "--quiet"]) == 0
    feeds = random_inputs(onnx.load(source), {"input": (1, 3, 32, 32)})
    np.savez(tmp_path / "in.npz", **feeds)
    outputs = []
    for run in ("1", "2"):
        json_out, html_out = str(tmp_path / f"{run}.json"), str(tmp_path / f"{run}.html")
        args = ["diff", str(source), str(pruned), "--json", json_out, "--html", html_out,
                "--inputs", str(tmp_path / "in.npz")]  # fmt: skip
        assert main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()
    assert (tmp_path / "1.html").read_bytes() == (tmp_path / "2.html").read_bytes()
    assert "->" in outputs[0] and "max rel" in outputs[0]
    report = json.loads((tmp_path / "1.json").read_text())
    assert {"layers", "totals", "removed", "added", "groups"} <= set(report)
    for row in report["layers"]:
        assert {"name", "op", "changed", "before", "after"} <= set(row)
        assert {"in_channels", "out_channels", "weights", "params", "macs"} <= set(row["before"])
    assert report["validation"]["outputs"][0]["max_abs"] is not None
    html = (tmp_path / "1.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    assert main(["diff", str(source), str(pruned), "--exit-code"]) == 3
    assert main(["diff", str(source), str(source), "--exit-code"]) == 0
    assert "no structural change" in capsys.readouterr().out


def test_cli_diff_errors_are_one_line(tmp_path, capsys):
    assert main(["diff", str(tmp_path / "missing.onnx"), str(tmp_path / "b.onnx")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("graphprune: error: cannot read the model") and error.count("\n") == 1
    assert error.endswith("missing.onnx: no such file\n")


def test_prune_and_analyze_write_html(tmp_path):
    source = str(cached("resnet_tiny", "dynamo"))
    out, html = tmp_path / "p.onnx", tmp_path / "p.html"
    assert main(["prune", source, "-o", str(out), "--ratio", "0.5", "--quiet",
                 "--html", str(html)]) == 0  # fmt: skip
    data = _embedded(html)
    assert data["mode"] == "diff" and data["validation"]["outputs"]
    assert data["before"]["model"] == source and data["after"]["model"] == str(out)
    assert data["totals"]["changed"] > 0 and data["attribution"] == "analysis"
    assert main(["analyze", source, "--html", str(tmp_path / "a.html")]) == 0
    data = _embedded(tmp_path / "a.html")
    assert data["mode"] == "analysis" and data["groups"]
    assert any(layer["groups"] for layer in data["layers"])


def _embedded(path) -> dict:
    text = path.read_text()
    start = text.index('type="application/json">') + len('type="application/json">')
    return json.loads(text[start : text.index("</script>", start)])
