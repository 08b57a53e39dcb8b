"""`graphprune sweep`: the JSON table, the Pareto chart in a real headless browser, the
--eval hook, a latency target, the local process pool and a Ray cluster started here.
Timings are never asserted on: only structure, sizes and (deterministic) quality."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_html_report import BROWSER, browse, console_errors

from graphprune.cli import main
from graphprune.inspect.pareto import pareto_front

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"
FAST = ["--threads", "1", "--repeats", "2"]


def sweep(tmp_path: Path, *extra: str, html: bool = False) -> tuple[int, dict | None]:
    out = tmp_path / "sweep.json"
    args = ["sweep", str(EXAMPLE), "-o", str(out), *FAST, *extra]
    if html:
        args += ["--html", str(tmp_path / "sweep.html")]
    code = main(args)
    return code, json.loads(out.read_text()) if code == 0 else None


def check_runs(data: dict, labels: list[str]) -> None:
    runs = data["runs"]
    assert [r["label"] for r in runs] == ["original", *labels]
    assert runs[0]["quality"] == 1.0 and runs[0]["macs_kept"] == 1.0
    for run in runs[1:]:
        assert run["error"] is None
        assert 0.0 < run["quality"] < 1.0 and 0.0 < run["macs_kept"] < 1.0
        assert run["latency_ms"] > 0 and run["params"] < runs[0]["params"]


@pytest.mark.skipif(BROWSER is None, reason="no headless browser (apt-get install chromium)")
def test_sweep_writes_the_table_and_a_pareto_chart(tmp_path, capsys):
    code, data = sweep(tmp_path, "--ratios", "0.25", "0.5", "--criteria", "l1", "l2", html=True)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.html", "sweep.json"]
    check_runs(data, ["l1, ratio 0.25", "l1, ratio 0.5", "l2, ratio 0.25", "l2, ratio 0.5"])
    by_label = {r["label"]: r for r in data["runs"]}
    assert by_label["l2, ratio 0.5"]["macs_kept"] < by_label["l2, ratio 0.25"]["macs_kept"]
    assert "swept 4 configurations" in capsys.readouterr().out

    page = tmp_path / "sweep.html"
    assert "http" not in re.sub(r'"http://www.w3.org/2000/svg"', "", page.read_text())
    dom, stderr = browse(page, tmp_path, "--dump-dom")
    assert 'data-rendered="ok"' in dom and 'id="js-error"' not in dom
    assert not console_errors(stderr)
    assert len(re.findall(r'<circle class="point', dom)) == len(data["runs"])
    front = pareto_front(data["runs"], "latency_ms")
    assert front and len(re.findall(r'<circle class="point front"', dom)) == len(front)
    assert len(re.findall(r'<tr class="run-row', dom)) == len(data["runs"])


def test_sweep_eval_hook_scores_each_model(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(
        "import sys, onnx\n"
        "model = onnx.load(sys.argv[1])\n"
        "print('scoring', sys.argv[1])\n"
        "print(sum(t.dims[0] for t in model.graph.initializer if len(t.dims) == 4) / 1000)\n"
    )
    command = f"{sys.executable} {script} {{model}}"
    code, data = sweep(tmp_path, "--ratios", "0.5", "--eval", command)
    assert code == 0
    original, pruned = data["runs"]
    assert data["quality"] == f"--eval {command}"
    assert original["quality"] > pruned["quality"] > 0  # conv output channels / 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["score.py", "sweep.json"]


def test_sweep_refuses_bad_options_in_one_line(tmp_path, capsys):
    cases = [
        (["--ratios", "1.5"], "--ratios"),
        (["--criteria", "flap"], "need --calib"),
        (["--eval", f"{sys.executable} -c pass"], "printed no number"),
        (["--jobs", "0"], "--jobs"),
    ]
    for extra, message in cases:
        assert sweep(tmp_path, *extra)[0] == 1
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_sweep_latency_target_and_process_pool(tmp_path):
    """A latency target runs the plan-measure loop in its worker; two worker processes
    give the same models (sizes, quality) as one."""
    extra = ["--ratios", "0.5", "--target-latency", "0.7", "--criteria", "l2"]
    code, pooled = sweep(tmp_path, *extra, "--jobs", "2")
    assert code == 0
    check_runs(pooled, ["l2, ratio 0.5", "l2, latency 0.7"])
    target = pooled["runs"][2]["latency_target"]
    assert target["target_fraction"] == 0.7 and target["attempts"]
    assert target["predicted_ms"] > 0 and target["measured_ms"] > 0
    code, serial = sweep(tmp_path, "--ratios", "0.5", "--criteria", "l2")
    assert serial["runs"][1]["quality"] == pooled["runs"][1]["quality"]
    assert serial["runs"][1]["params"] == pooled["runs"][1]["params"]


@pytest.fixture
def ray_cluster():
    """A one-CPU Ray head started here (`ray start --block`), stopped by its process group;
    its folder is short (Ray's socket paths must fit 107 bytes) and removed afterwards."""
    pytest.importorskip("ray", reason="Ray is the optional extra `ray`: pip install ray")
    folder = tempfile.mkdtemp(prefix="gp-ray-", dir="/tmp")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start exited"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops what it started
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_sweep_on_a_ray_cluster(tmp_path, ray_cluster):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, data = sweep(out_dir, "--ratios", "0.5", "--criteria", "l2", "--ray", ray_cluster)
    assert code == 0
    check_runs(data, ["l2, ratio 0.5"])
    local = sweep(tmp_path / "out", "--ratios", "0.5", "--criteria", "l2")[1]
    assert np.isclose(data["runs"][1]["quality"], local["runs"][1]["quality"])
    assert data["runs"][1]["macs"] == local["runs"][1]["macs"]
