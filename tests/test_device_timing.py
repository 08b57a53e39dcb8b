"""Device-resident timing (issue 25) without a GPU: on the CPU provider the "device" mode
runs through onnxruntime IO binding (OrtValues on "cpu"), so the path a GPU takes is the
path these tests take; copies are measured apart; profiles stop repeating once medians
are stable; GPU providers probe the tile multiples; `--strict` fails a missed target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune as gp
import graphprune.runtime.binding as binding_module
from graphprune.cli import main
from graphprune.cli.prune import LATENCY_MISSED
from graphprune.errors import GraphpruneError
from graphprune.pipeline import PruneOptions, prune_model
from graphprune.planning.latency import LatencyCostModel, snap_steps
from graphprune.runtime.binding import Runner, device_of, is_gpu, stable
from graphprune.runtime.inputs import input_shapes, random_inputs
from graphprune.runtime.latency import bench
from graphprune.runtime.layers import layer_axes
from graphprune.runtime.profile import (
    AxisCurve,
    LatencyTable,
    LayerTiming,
    ProfileOptions,
    _times_ms,
    fingerprint,
    grid,
    machine_id,
    profile,
)  # fmt: skip
from graphprune.runtime.sessions import run, session
from models.export import cached

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def tiny():
    model = gp.load(EXAMPLE)
    shapes = input_shapes(model)
    return model, shapes, random_inputs(model, shapes)


def test_device_mode_runs_through_io_binding_with_the_outputs_of_a_plain_run(tiny, monkeypatch):
    model, _, feeds = tiny
    sess = session(model, CPU, 1)
    expected = run(sess, feeds)
    runner = Runner(sess, feeds, provider=CPU, timing="device")
    assert runner.binding is not None and runner.device == "cpu"

    def no_plain_run(*_):
        raise AssertionError("device timing must not run with host arrays")

    monkeypatch.setattr(binding_module, "run", no_plain_run)
    assert runner() > 0
    got = runner.outputs()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    copies = runner.copies()
    assert copies.upload_ms >= 0 and copies.download_ms >= 0


def test_end_to_end_mode_runs_with_host_arrays(tiny):
    model, _, feeds = tiny
    runner = Runner(session(model, CPU, 1), feeds, provider=CPU, timing="end-to-end")
    assert runner.binding is None and runner() > 0
    copies = runner.copies()  # measured all the same, with a binding of its own
    assert copies.upload_ms >= 0 and not hasattr(runner, "_values")
    with pytest.raises(GraphpruneError, match="--timing must be one of"):
        Runner(runner.session, feeds, provider=CPU, timing="host")


def test_devices_of_providers():
    assert device_of("CUDAExecutionProvider") == device_of("TensorrtExecutionProvider") == "cuda"
    assert device_of("ROCMExecutionProvider") == "cuda" and device_of(CPU) == "cpu"
    assert is_gpu("CUDAExecutionProvider") and not is_gpu(CPU)


def test_bench_reports_timing_and_copies_apart(tiny):
    model, _, feeds = tiny
    pruned = gp.prune(gp.analyze(model), gp.plan(gp.analyze(model), gp.PlanOptions(ratio=0.5)))
    for timing in ("device", "end-to-end"):
        result = bench(model, pruned, feeds, repeats=3, provider=CPU, threads=1, timing=timing)
        assert result["timing"] == timing and 1 <= result["repeats"] <= 3
        for key in ("copies_ms_before", "copies_ms_after"):
            assert set(result[key]) == {"upload_ms", "download_ms"}
            assert min(result[key].values()) >= 0


def test_stable_median():
    assert stable([1.0] * 5, 0.01)
    assert not stable([1.0] * 4, 0.5)  # too few to know
    assert not stable([1.0, 2.0] * 10, 0.1)
    assert stable([1.0, 1.01] * 20, 0.02)
    assert stable([1.0, 2.0] * 10, 0.1, floor=0.5) and not stable([1.0, 2.0] * 10, 0.1, 0.4)


class FakeRunner:
    """A stand-in for a Runner whose run times come from a list (cycled)."""

    def __init__(self, times):
        self.times, self.calls = times, 0

    def __call__(self):
        self.calls += 1
        return self.times[self.calls % len(self.times)]


def test_profile_rounds_stop_once_the_medians_are_stable():
    options = ProfileOptions(repeats=15, warmup=1, spread=0.03)
    steady = _times_ms([FakeRunner([2.0]), FakeRunner([5.0])], options)
    assert [len(t) for t in steady] == [5, 5]  # the fewest that bound the median
    noisy = _times_ms([FakeRunner([2.0]), FakeRunner([1.0, 3.0])], options)
    assert [len(t) for t in noisy] == [5, 15]  # the steady one leaves; the cap


def test_profile_records_its_timing_and_a_table_of_another_timing_is_refused(tiny):
    model, shapes, feeds = tiny
    analysis = gp.analyze(model)
    options = ProfileOptions(threads=1, repeats=2, timing="end-to-end")
    table = profile(analysis, shapes, feeds, options)
    assert table.timing == "end-to-end"
    again = LatencyTable.from_json(json.loads(json.dumps(table.to_json())), "t.json")
    assert again.timing == "end-to-end"
    with pytest.raises(GraphpruneError, match="measured for timing 'end-to-end'"):
        again.check_matches("t.json", machine=machine_id(), provider=CPU, threads=1,
                            shapes=shapes, model=fingerprint(model), timing="device")  # fmt: skip


def test_gpu_grid_probes_each_tile_multiple():
    """On a GPU the aligned curve is tile-aligned (multiples of 64 from 256 channels on)
    and the probes measure a width off each smaller multiple."""
    for channels in (256, 512, 2048):
        aligned, probes = grid(channels, gpu=True)
        largest = {max(a for a in (128, 64, 32, 16, 8, 1) if w % a == 0) for w in probes}
        assert largest == {32, 16, 8, 1}
        assert all(w % 64 == 0 for w in aligned) and aligned[-1] == channels
        assert all(0 < w < channels for w in probes)
        cpu_aligned, cpu_probes = grid(channels)
        assert cpu_aligned[0] == {256: 32, 512: 64, 2048: 256}[channels]  # as before
        assert {w % 32 for w in cpu_probes} >= {16, 24, 31}  # off 32, 16, 8 as before


def test_snap_steps_follow_a_gpu_like_tile_cliff():
    """Synthetic GPU-like curves on ResNet-18's layers (a width off a multiple of 64
    costs up to 1.6x): groups wide enough are snapped to 64; a CPU-like table (blocks of
    16) snaps to 16."""
    model = gp.load(cached("resnet18", "classic"))
    shapes = input_shapes(model)
    analysis = gp.analyze(model)
    penalties = {
        64: {1: 1.6, 8: 1.4, 16: 1.3, 32: 1.2, 64: 1.0, 128: 1.0},
        16: {1: 1.5, 8: 1.3, 16: 1.0, 32: 1.0},
    }
    for expected, penalty in penalties.items():
        layers = {}
        for name, roles in layer_axes(analysis).items():
            axes = {}
            for role, atoms in roles.items():
                widths, _ = grid(atoms.size, gpu=True)
                axes[role] = AxisCurve(atoms.size, widths, [float(w) for w in widths],
                                       dict(penalty))  # fmt: skip
            layers[name] = LayerTiming(name, name, 1.0, 1000, axes)
        table = LatencyTable(
            machine_id(), "CUDAExecutionProvider", 1, {k: list(v) for k, v in shapes.items()},
            fingerprint(model), float(len(layers)), 1, layers, timing="device",
        )  # fmt: skip
        steps = snap_steps(analysis, LatencyCostModel(analysis, table), 1)
        for gid, step in steps.items():
            wide = analysis.groups[gid].channels >= 4 * expected
            assert step == (expected if wide else 1), (gid, analysis.groups[gid].channels)
        assert any(step == expected for step in steps.values())


def _prune(tmp_path, *extra):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["prune", str(EXAMPLE), "-o", str(out), "--quiet", "--threads", "1",
                 "--repeats", "2", "--report", str(report), *extra])  # fmt: skip
    return code, out, report


def test_cli_reports_which_latency_was_timed(tmp_path, capsys):
    for timing in ("device", "end-to-end"):
        code, out, report = _prune(tmp_path, "--target-latency", "0.8", "--latency-iterations",
                                   "1", "--bench", "--timing", timing)  # fmt: skip
        assert code == 0
        data = json.loads(report.read_text())
        latency, timed = data["latency"], data["bench"]
        assert latency["timing"] == timed["timing"] == timing
        assert set(latency["copies_ms"]) == {"upload_ms", "download_ms"}
        assert set(timed["copies_ms_before"]) == {"upload_ms", "download_ms"}
        printed = capsys.readouterr().out
        assert printed.count(f"{timing} timing") == 2  # the target's line and --bench's
        onnx.checker.check_model(onnx.load(out), full_check=True)


def test_strict_fails_a_latency_loop_outside_its_tolerance(tmp_path, capsys):
    """1% of the latency in one round: per-run overhead alone is more on any machine."""
    code, out, report = _prune(tmp_path, "--target-latency", "0.01", "--latency-iterations",
                               "1", "--strict")  # fmt: skip
    assert code == LATENCY_MISSED == 5
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "outside ±5%" in error and "--strict" in error
    assert not out.exists() and not report.exists()
    code, out, _ = _prune(tmp_path, "--target-latency", "0.01", "--latency-iterations", "1")
    assert code == 0 and out.exists()  # without --strict: written, and said
    assert "outside ±5%" in capsys.readouterr().out


@pytest.mark.parametrize("bench", [True, "device", "end-to-end"])
def test_the_api_times_both_models_when_bench_is_set(bench):
    """`PruneOptions.bench` takes the timing mode; True (the flag it was) means "device"."""
    options = PruneOptions(model=str(EXAMPLE), plan=gp.PlanOptions(ratio=0.3), bench=bench)
    report = prune_model(options).report["bench"]
    assert report["timing"] == ("device" if bench is True else bench)
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0
