"""The hostile-input suite in brief: one case of every mutation class of `tools/fuzz.py`
through the real command line, each ending in valid outputs or a one-line refusal, within
the time limit, with the inputs untouched and nothing left behind; and the fuzzer's own
checks shown to catch what they are for. `python tools/fuzz.py` runs the full suite."""

from __future__ import annotations

import dataclasses

import pytest
from fuzz import _exit_problems, run_case
from fuzz_cases import CLASSES, MODEL, RUN_TIMEOUT_S, Case, make_case

import graphprune.cli.analyze as analyze_command
from graphprune.cli import main


@pytest.mark.parametrize("kind", sorted(CLASSES))
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


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    def exhausted(_):
        raise MemoryError("Unable to allocate 175. TiB for an array with shape (10**12,)")

    monkeypatch.setattr(analyze_command, "load", exhausted)
    assert main(["analyze", "model.onnx"]) == 1
    assert capsys.readouterr().err == (
        "graphprune: error: out of memory: Unable to allocate 175. TiB for an array with shape "
        "(10**12,)\n"
    )
