"""The benchmark suite (`python -m tools.bench`): every registered benchmark runs its quick
mode here, so that none rots between the runs that BENCHMARKS.md records; those without a
meaningful quick mode (a real LLM, a GPU) import and parse their arguments. The quick
inputs are chosen to work: a FAILED row or a traceback fails the test.

Speed is not checked here (BENCHMARKS.md records it); the whole file takes about two
minutes of CPU, most of it the quick runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import bench as runner  # tools/bench.py (tools/ is on pytest's path)
import pytest
from benchkit import records
from benchkit.registry import BENCHMARKS, Benchmark
from benchkit.tables import markdown

REPO = Path(__file__).resolve().parents[1]
QUICK = [b for b in BENCHMARKS if b.quick is not None]


def _present(entry: Benchmark) -> None:
    if not entry.present():
        pytest.skip(f"tools/{entry.module}.py is not in this checkout")


@pytest.mark.parametrize("entry", QUICK, ids=[b.name for b in QUICK])
def test_quick_mode_runs(entry: Benchmark, capsys, tmp_path) -> None:
    _present(entry)
    if missing := entry.missing():
        pytest.skip(f"{entry.name} needs {', '.join(missing)}")
    jsonl = tmp_path / "records.jsonl"
    status = runner.main([entry.name, "--quick", "--jsonl", str(jsonl)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert status == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not re.search(r"\bFAILED\b", text), text[-3000:]
    assert text.strip(), "a benchmark prints its table"
    last = json.loads(jsonl.read_text().splitlines()[-1])
    assert last["benchmark"] == entry.name
    assert last["row"]["status"] == 0 and last["row"]["quick"] is True


@pytest.mark.parametrize("entry", BENCHMARKS, ids=[b.name for b in BENCHMARKS])
def test_imports_and_parses_arguments(entry: Benchmark, capsys) -> None:
    """--help builds the script's parser after its imports; exit status 0."""
    _present(entry)
    status = runner.main([entry.name, "--help"])
    text = capsys.readouterr().out
    assert status == 0
    assert "usage:" in text and "--help" in text


def test_registry_names_every_benchmark_script() -> None:
    registered = {b.module for b in BENCHMARKS}
    scripts = {p.stem for p in (REPO / "tools").glob("bench_*.py")}
    assert not scripts - registered, "register these in tools/benchkit/registry.py"
    names = [b.name for b in BENCHMARKS]
    assert len(names) == len(set(names))


def test_every_benchmark_section_exists_and_says_its_command() -> None:
    """Each registered benchmark's BENCHMARKS.md section exists and names the command."""
    text = (REPO / "BENCHMARKS.md").read_text()
    headings = set(re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE))
    for benchmark in BENCHMARKS:
        if not benchmark.present() or benchmark.section is None:
            continue
        assert benchmark.section in headings, benchmark.name
        assert f"python -m tools.bench {benchmark.name}" in text, benchmark.name


def test_runner_errors_and_listing(capsys) -> None:
    assert runner.main(["no-such-benchmark"]) == 2
    assert "no benchmark 'no-such-benchmark'" in capsys.readouterr().err
    no_quick = next(b for b in BENCHMARKS if b.quick is None and b.present())
    assert runner.main([no_quick.name, "--quick"]) == 2
    assert "has no quick mode" in capsys.readouterr().err
    assert runner.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"| {b.name} " in listing for b in BENCHMARKS)


def test_runner_options_leave_the_scripts_arguments_alone() -> None:
    options, rest = runner.split_options(["--json", "a.json", "--quick", "--models", "x"])
    assert options.quick and options.jsonl is None
    assert rest == ["--json", "a.json", "--models", "x"]
    options, rest = runner.split_options(["--jsonl", "r.jsonl", "--list"])
    assert options.jsonl == Path("r.jsonl") and not options.quick and rest == ["--list"]


def test_records_carry_the_environment(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    records.append(path, "demo", ["--x"], [{"ms": 1.5}, {"ms": 2.0}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["row"]["ms"] for line in lines] == [1.5, 2.0]
    first = lines[0]
    assert first["machine"]["cpu_count"] >= 1 and first["machine"]["cpu"]
    assert {"python", "graphprune", "onnx", "numpy"} <= set(first["versions"])
    assert first["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", first["commit"])


def test_markdown_table() -> None:
    assert markdown([{"a": 1, "b": "x"}, {"a": 22, "b": "yy"}]).splitlines() == [
        "|   a | b   |",
        "|-----|-----|",
        "|   1 | x   |",
        "|  22 | yy  |",
    ]
