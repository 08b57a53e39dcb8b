"""The HTML reports render in a real headless browser without script errors: the width
chart, the layer rows, the group view and the validation table are all in the DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import graphprune as gp
from graphprune.inspect.diff import diff_models
from graphprune.inspect.html import analysis_html, diff_html, render
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.export import cached

BROWSER = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless browser: install Debian's chromium (apt-get install -y chromium) "
    "to test the HTML report",
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
    "--v=0", "--hide-scrollbars", "--window-size=1400,1600",
]  # fmt: skip


def browse(page: Path, tmp_path: Path, *action: str) -> tuple[str, str]:
    """(stdout, stderr) of the browser on `page` with `action` (--dump-dom, --screenshot)."""
    profile = tmp_path / "profile"
    done = subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def pruned_diff():
    model = gp.load(cached("resnet_tiny", "dynamo"))
    analysis = gp.analyze(model)
    pruned = gp.prune(analysis, gp.plan(analysis, 0.5))
    feeds = random_inputs(model, input_shapes(model))
    return diff_models(model, pruned, feeds=feeds, analysis=analysis)


def test_diff_report_renders_chart_table_and_groups(pruned_diff, tmp_path):
    page = tmp_path / "diff.html"
    page.write_text(diff_html(pruned_diff))
    dom, stderr = browse(page, tmp_path, "--dump-dom")
    assert 'data-rendered="ok"' in dom and 'id="js-error"' not in dom
    assert not console_errors(stderr)
    charted = [
        row for row in pruned_diff["layers"]
        if row["before"]["out_channels"] is not None or row["after"]["out_channels"] is not None
    ]  # fmt: skip
    assert len(re.findall(r'<rect class="bar-after"', dom)) == len(charted) > 0
    assert len(re.findall(r'<rect class="bar-before"', dom)) == len(charted)
    # The table starts with "changed only" ticked when anything changed.
    assert len(re.findall(r'<tr class="layer-row', dom)) == pruned_diff["totals"]["changed"]
    assert len(re.findall(r'<tr class="group-row', dom)) == len(pruned_diff["groups"]) > 0
    assert len(re.findall(r'<tr class="validation-row', dom)) == 1
    assert "\u2192" in dom  # before -> after cells

    shot = tmp_path / "diff.png"
    browse(page, tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_analysis_report_renders(tmp_path):
    model = gp.load(cached("mobilenetv2", "classic"))
    analysis = gp.analyze(model)
    page = tmp_path / "analysis.html"
    page.write_text(analysis_html(analysis, "mobilenetv2.onnx"))
    dom, stderr = browse(page, tmp_path, "--dump-dom")
    assert 'data-rendered="ok"' in dom and 'id="js-error"' not in dom
    assert not console_errors(stderr)
    assert len(re.findall(r'<tr class="group-row', dom)) == len(analysis.groups)
    layers = [node for node in model.graph.node if node.op_type != "Constant"]  # weights
    assert len(re.findall(r'<tr class="layer-row', dom)) == len(layers)
    assert len(re.findall(r'<rect class="bar-after"', dom)) > 0
    assert "prunable" in dom
    # Each group with a coupling has its drawing (hidden until "why coupled" is clicked).
    coupled = [g for g in analysis.groups if analysis.coupling_graph(g.id).number_of_edges()]
    assert len(re.findall(r'<tr class="coupling-row"', dom)) == len(coupled) > 0
    assert len(re.findall(r'<svg[^>]*class="coupling"', dom)) == len(coupled)


def test_script_errors_leave_a_marker(tmp_path):
    """The checks above would notice a broken page: a failing render writes the marker."""
    page = tmp_path / "broken.html"
    page.write_text(render({"mode": "diff"}))
    dom, _ = browse(page, tmp_path, "--dump-dom")
    assert 'id="js-error"' in dom and 'data-rendered="ok"' not in dom
