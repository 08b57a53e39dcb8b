"""One entry point for the benchmarks under tools/:

    python -m tools.bench --list                  # the registry (tools/benchkit/registry.py)
    python -m tools.bench NAME [ARGS...]          # tools/<script>.py ARGS, as BENCHMARKS.md says
    python -m tools.bench NAME --quick            # seconds on small inputs: a smoke run
    python -m tools.bench NAME --jsonl FILE ...   # also append records (machine, versions, commit)

Run from the repository root. ARGS go to the script unchanged (`python -m tools.bench NAME
--help` shows them), except `--quick` and `--jsonl FILE`, which are the runner's: a
script's own `--quick` (a smaller but honest run) stays `python tools/<script>.py --quick`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
for _path in (TOOLS.parent, TOOLS):  # the scripts import `models`, `corpus`, `benchkit`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchkit import records  # noqa: E402
from benchkit.registry import BENCHMARKS, Benchmark, find  # noqa: E402
from benchkit.tables import markdown  # noqa: E402


def listing() -> str:
    rows = [
        {
            "name": b.name,
            "script": f"tools/{b.module}.py" + ("" if b.present() else " (absent)"),
            "quick": "yes" if b.quick is not None else f"no: {b.no_quick}",
            "needs": ", ".join(f"{m} (missing)" if m in b.missing() else m for m in b.requires),
            "what": b.summary,
        }
        for b in BENCHMARKS
    ]
    return markdown(rows)


@contextlib.contextmanager
def script_argv(benchmark: Benchmark, argv: list[str]) -> Iterator[None]:
    """sys.argv as `python tools/<script>.py ARGV` sets it (some mains read sys.argv)."""
    saved = sys.argv
    sys.argv = [str(benchmark.path), *argv]
    try:
        yield
    finally:
        sys.argv = saved


def run(benchmark: Benchmark, argv: list[str]) -> int:
    """Run the script's main on `argv` in this process; its exit status."""
    module = importlib.import_module(benchmark.module)
    with script_argv(benchmark, argv):
        try:
            status = module.main()
        except SystemExit as exit_:  # argparse's --help and errors, sys.exit in a script
            code = exit_.code
            status = code if isinstance(code, int) or code is None else 1
    return int(status or 0)


def split_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The runner's own options (--quick, --jsonl FILE) and the script's arguments. No
    abbreviations: a script's --json must not read as --jsonl."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--quick", action="store_true")
    own.add_argument("--jsonl", type=Path)
    return own.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] == "--list":
        print(listing())
        return 0
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    try:
        benchmark = find(name)
    except KeyError:
        print(f"error: no benchmark {name!r} (python -m tools.bench --list)", file=sys.stderr)
        return 2
    if not benchmark.present():
        print(f"error: tools/{benchmark.module}.py is not in this checkout", file=sys.stderr)
        return 2
    options, script_args = split_options(rest)
    if options.quick and benchmark.quick is None:
        print(f"error: {name} has no quick mode: {benchmark.no_quick}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="graphprune-bench-") as tmp:
        if options.quick:
            quick = [arg.replace("{tmp}", tmp) for arg in benchmark.quick or ()]
            script_args = [*quick, *script_args]
        records.take_emitted()
        started = time.perf_counter()
        status = run(benchmark, script_args)
        wall_s = round(time.perf_counter() - started, 2)
    if options.jsonl:
        finished = {"status": status, "wall_s": wall_s, "quick": options.quick}
        records.append(options.jsonl, name, script_args, [*records.take_emitted(), finished])
    return status


if __name__ == "__main__":
    sys.exit(main())
