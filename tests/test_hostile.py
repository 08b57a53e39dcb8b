"""The hostile-input suite in brief: one case of every mutation class of `tools/fuzz.py`
through the real command line, each ending in valid outputs or a one-line refusal, within
the time limit, with the inputs untouched and nothing left behind; and the fuzzer's own
checks shown to catch what they are for. `python tools/fuzz.py` runs the full suite."""

from __future__ import annotations

import dataclasses

import pytest
from fuzz import _exit_problems, run_case
from fuzz_cases import CLASSES, MODEL, PRUNE, RUN_TIMEOUT_S, Case, make_case

import graphprune.cli.analyze as analyze_command
from graphprune.cli import main

# The model-zoo classes take seconds and gigabytes per case: tested on one small model below.
ZOO_CLASSES = {"zoo", "zoo_mutation"}


@pytest.mark.parametrize("kind", sorted(set(CLASSES) - ZOO_CLASSES))
def test_every_mutation_class_ends_cleanly(kind, tmp_path):
    outcome = run_case(make_case(kind, 0, seed=0), 0, tmp_path)
    assert outcome.problems == [], (outcome.case.argv, outcome.stderr)
    if outcome.code != 0:
        assert outcome.code in (1, 2)
        assert outcome.stderr.strip().splitlines()[-1].startswith("graphprune")


def test_a_loop_of_days_is_stopped_by_the_run_time_limit(tmp_path):
    case = make_case("loop_hang", 0, seed=0)
    outcome = run_case(case, 0, tmp_path)
    assert case.argv[-2:] == ["--run-timeout", RUN_TIMEOUT_S]
    assert outcome.code == 1
    assert outcome.stderr.strip() == (
        f"graphprune: error: onnxruntime ran past the {RUN_TIMEOUT_S} s limit (--run-timeout)"
    )


@pytest.mark.parametrize("index", range(3))
def test_external_data_outside_the_model_folder_is_refused(index, tmp_path):
    outcome = run_case(make_case("external_traversal", index, seed=0), index, tmp_path)
    assert outcome.code == 1 and outcome.problems == []
    assert "the model's folder" in outcome.stderr


def test_outputs_onto_the_input_are_refused_before_anything_runs(tmp_path):
    case = make_case("output_paths", 0, seed=0)
    case = dataclasses.replace(case, argv=["analyze", MODEL, "--html", MODEL], name="html")
    outcome = run_case(case, 0, tmp_path)
    assert outcome.code == 1 and outcome.problems == []
    assert "is the input" in outcome.stderr


def test_the_checks_catch_a_stray_file_and_a_refusal_that_did_not_happen(tmp_path):
    valid = make_case("output_paths", 0, seed=0)
    case = Case("self_test", "html not declared", ["analyze", MODEL, "--html", "a.html"],
                valid.files, must_fail=True)  # fmt: skip
    outcome = run_case(case, 0, tmp_path)
    assert outcome.code == 0
    assert ("stray", "left work/a.html") in outcome.problems
    assert ("crash", "accepted what must be refused") in outcome.problems


def test_the_checks_catch_a_hang(tmp_path):
    case = make_case("loop_hang", 0, seed=0)
    case = dataclasses.replace(case, argv=case.argv[:-2])  # no --run-timeout: runs for days
    outcome = run_case(case, 0, tmp_path, timeout=3)
    assert outcome.code is None
    assert [kind for kind, _ in outcome.problems] == ["hang"]


def test_the_checks_catch_tracebacks_and_long_errors():
    case = Case("self_test", "", [])
    assert _exit_problems(case, 1, "Traceback (most recent call last):\n  ...\nKeyError: 0\n")
    assert _exit_problems(case, 1, "graphprune: error: one\nand another line\n")
    assert _exit_problems(case, 70, "graphprune: internal error, please report: x\n")
    assert _exit_problems(case, 0, "x.py:3: RuntimeWarning: overflow\n")
    assert not _exit_problems(case, 1, "graphprune: error: the model has no nodes\n")
    usage = "usage: graphprune prune ...\ngraphprune prune: error: argument --ratio: invalid\n"
    assert not _exit_problems(case, 2, usage)


def test_running_out_of_memory_is_one_line(monkeypatch, capsys, tmp_path):
    def exhausted(_):
        raise MemoryError("Unable to allocate 175. TiB for an array with shape (10**12,)")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")  # a readable file: its path passes the checks
    monkeypatch.setattr(analyze_command, "load", exhausted)
    assert main(["analyze", "model.onnx"]) == 1
    assert capsys.readouterr().err == (
        "graphprune: error: out of memory: Unable to allocate 175. TiB for an array with shape "
        "(10**12,)\n"
    )


def _named(kind: str, text: str, seed: int = 0) -> Case:
    """The first case of a class whose description contains `text`."""
    for index in range(3000):
        case = make_case(kind, index, seed)
        if text in case.name:
            return case
    raise LookupError(f"no {kind} case named like {text!r}")


@pytest.mark.parametrize(
    ("kind", "text"),
    [("input_paths", "model: loop"), ("input_paths", "--inputs: fifo"),
     ("input_paths", "--plan: link to fifo"), ("input_paths", "--calib folder: fifo"),
     ("input_paths", "B: unreadable"), ("input_paths", "--latency-table: long path"),
     ("input_paths", "sweep: long name"), ("input_paths", "A: device"),
     ("input_paths", "--calib: locked folder"), ("output_hostile", "-o: loop"),
     ("output_hostile", "--html: fifo"), ("output_hostile", "read-only folder"),
     ("output_hostile", "--json: long path"), ("output_hostile", "profile -o: loop as folder"),
     ("external_paths", "nul"), ("external_paths", "fifo"), ("external_paths", "unreadable"),
     ("external_paths", "loop")],
)  # fmt: skip
def test_hostile_paths_are_refused_in_one_line(kind, text, tmp_path):
    """Loops, over-long names, FIFOs (never opened: that would block), devices, mode-000
    files and folders (unreadable here although the suite runs as root: it drops root's
    override of permissions), a NUL byte in an external-data location."""
    case = _named(kind, text)
    outcome = run_case(case, 0, tmp_path, timeout=30)
    assert outcome.code == 1 and outcome.problems == [], (case.argv[:4], outcome.stderr)
    assert outcome.stderr.startswith("graphprune: error: ")


@pytest.mark.parametrize("tool", ["prune -o", "prune --report", "diff --json", "profile -o"])
def test_an_output_name_of_255_bytes_is_written(tool, tmp_path):
    case = _named("output_hostile", f"{tool}: longest valid name")
    assert case.must_succeed and any(len(name) == 255 for name in case.outputs)
    outcome = run_case(case, 0, tmp_path)
    assert outcome.code == 0 and outcome.problems == [], outcome.stderr


@pytest.mark.parametrize(
    "name", ["attention hidden 0", "conv classes 0", "attention side branch of 0 outputs",
             "conv split into 8 and 0", "conv concat of an empty constant", "conv width 0"]
)  # fmt: skip
def test_zero_sized_dims_end_cleanly(name, tmp_path):
    for index in range(3):  # three commands on each model
        case = _named("zero_dims", name, seed=index)
        outcome = run_case(case, 0, tmp_path / str(index))
        assert outcome.problems == [], (case.argv, outcome.stderr)


def test_a_run_leaves_home_and_tmpdir_as_it_found_them(tmp_path):
    """`python -m graphprune` in a fresh HOME, XDG folders and TMPDIR leaves them empty
    (onnxruntime's telemetry is off); the same run with telemetry forced on shows the
    check catching its device id, event cache and session file."""
    valid = make_case("output_paths", 0, seed=0)
    case = Case("self_test", "prune", [*PRUNE, "--ratio", "0.3"], valid.files,
                outputs=("out.onnx",))  # fmt: skip
    clean = run_case(case, 0, tmp_path / "off", forked=False)
    assert clean.code == 0 and clean.problems == [], clean.stderr
    on = run_case(case, 0, tmp_path / "on", forked=False,
                  environment={"ORT_DISABLE_TELEMETRY": "0"})  # fmt: skip
    left = {what for kind, what in on.problems if kind == "stray"}
    if not left:
        pytest.skip("this onnxruntime writes no telemetry files (a build without 1DS)")
    assert "left tmp/.ses" in left
    assert "left home/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid" in left


@pytest.mark.parametrize(("kind", "text"), [("zoo", "squeezenet"), ("zoo_mutation", "squeezenet")])
def test_model_zoo_classics_are_seeds(kind, text, tmp_path):
    """The IR 3 classics shipped with onnx, as they are and mutated (a small one here),
    through analyze and diff. (What pruning them writes is the interface contract of IR < 4
    models, which the suite checks: see tools/fuzz.py.)"""
    case = _named(kind, text)
    commands = (["analyze", MODEL, "--json"], ["diff", "m/base.onnx", MODEL, "--json", "d.json"])
    for number, argv in enumerate(commands):
        run = dataclasses.replace(case, argv=argv, outputs=("d.json",) if "d.json" in argv else ())
        outcome = run_case(run, 0, tmp_path / str(number))
        assert outcome.problems == [], (case.name, argv, outcome.stderr)
