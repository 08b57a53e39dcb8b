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
        except SystemExit as exit_:  # argparse's --help and errors
            status = exit_.code if isinstance(exit_.code, int) else 1
    return int(status or 0)


def quick_argv(benchmark: Benchmark, tmp: Path) -> list[str]:
    if benchmark.quick is None:
        raise SystemExit(f"{benchmark.name} has no quick mode: {benchmark.no_quick}")
    return [arg.replace("{tmp}", str(tmp)) for arg in benchmark.quick]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__.splitlines()[0], add_help=False
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("name", nargs="?", help="a benchmark (see --list)")
    args, rest = parser.parse_known_args(argv)
    if args.list or (args.name is None and not args.help):
        print(listing())
        return 0
    if args.name is None:
        print(__doc__)
        return 0
    try:
        benchmark = find(args.name)
    except KeyError:
        print(f"error: no benchmark {args.name!r} (python -m tools.bench --list)", file=sys.stderr)
        return 2
    if args.help:
        rest = ["--help", *rest]
    if not benchmark.present():
        print(f"error: tools/{benchmark.module}.py is not in this checkout", file=sys.stderr)
        return 2
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--quick", action="store_true")
    own.add_argument("--jsonl", type=Path)
    options, script_args = own.parse_known_args(rest)
    with tempfile.TemporaryDirectory(prefix="graphprune-bench-") as tmp:
        if options.quick:
            script_args = [*quick_argv(benchmark, Path(tmp)), *script_args]
        records.take_emitted()
        started = time.perf_counter()
        status = run(benchmark, script_args)
        wall_s = round(time.perf_counter() - started, 2)
    if options.jsonl:
        rows = records.take_emitted()
        finished = {"status": status, "wall_s": wall_s, "quick": options.quick}
        records.append(options.jsonl, benchmark.name, script_args, [*rows, finished])
    return status


if __name__ == "__main__":
    sys.exit(main())
