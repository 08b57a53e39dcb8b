"""The hostile-input suite: graphprune's command line on malformed models, files and options.

From a few small valid models (`tools/fuzz_models.py`: a conv net, an MLP with attention, one
with an If, one with a Loop, the conv net with external data) it derives hostile cases
(`tools/fuzz_cases.py`: corrupt protobuf, external data that is missing, out of range or
outside the model's folder, cycles, dangling and duplicate names, wrong weight dims, absurd
dims, NaN weights, unknown ops, ancient and future versions, empty graphs, broken subgraphs,
a Loop that would run for days, and misuse of every option and input file), lays each out
in a fresh folder and runs the real command, `python -m graphprune ...`, there in its own
process with a time limit. Every case must end with

- exit 0 and valid outputs (models pass the ONNX checker as fully as the input does, JSON
  parses, HTML is a page), or
  a refusal: exit 1 and exactly one line on stderr starting with `graphprune:`, or
  argparse's usage error (exit 2). Cases marked `must_fail` (bad options, outputs onto
  inputs, external data outside the model's folder...) must be refused;
- within the time limit (no hang);
- every file that existed before byte-identical after (no input modified);
- nothing new in the folder or in its TMPDIR but the requested outputs, and nothing at all
  when the command failed (no stray files).

"crash" counts every other wrong outcome: a traceback, another exit code, an error of
several lines, a warning printed on success, an invalid output, or a refusal that did not
happen. Usage (from the
repository root, so that this tree's graphprune is the one run)::

    python tools/fuzz.py                       # 1000 cases, seed 0, 2 jobs
    python tools/fuzz.py --cases 3000 --seed 7 --jobs 4
    python tools/fuzz.py --only plan_file --keep /tmp/cases   # one class, keep the folders
    python tools/fuzz.py --list                # the mutation classes

The last line is the summary, e.g. `cases=1000 ok clean crash=0 hang=0 stray=0
input_modified=0`; each failing case is listed above it with its command and stderr. The
exit status is 0 when every case passed. Cases run as subprocesses (about 0.6 s each, most
of it Python and onnxruntime start-up): only a separate process shows hangs, stray files
and tracebacks exactly as a user sees them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from fuzz_cases import CLASSES, Case, make_case, schedule

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this tree's graphprune, in this process and the forked ones
# Cases fork from a server that has imported what every case imports (about 0.5 s, and 2 s more
# where onnxruntime's symbolic shape inference imports torch): a fresh process per case all
# the same, with its own exit status, stderr, time limit, cwd and TMPDIR.
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(
    ["graphprune.cli", "onnxruntime", "onnxruntime.tools.symbolic_shape_infer", "fuzz"]
)
HANG_S = 60.0
MEMORY_LIMIT = 8 * 2**30  # address space per case: an attempt to allocate terabytes fails
KINDS = ("crash", "hang", "stray", "input_modified")
# Importing onnxruntime records a session id in $TMPDIR/.ses unless a valid one is there (as in
# /tmp on any machine that ran it once): each case's TMPDIR starts with one, like /tmp.
ORT_SESSION_FILE = b"1795431522010\nba738adc-adb0-bdb0-2416-d5aded2dea2e\n"


@dataclass
class Outcome:
    case: Case
    index: int
    code: int | None  # None: killed after the time limit
    stderr: str
    seconds: float
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, what)


def lay_out(case: Case, folder: Path) -> None:
    for relative, data in case.files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for relative, target in case.links.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).symlink_to(target)
    for relative in case.readonly:
        (folder / relative).mkdir(parents=True, exist_ok=True)
        (folder / relative).chmod(0o555)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash (links: their target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(
    case: Case, index: int, root: Path, timeout: float = HANG_S, forked: bool = True
) -> Outcome:
    """Run one case in `root` (a fresh folder: `work` is the command's, `tmp` its TMPDIR),
    forked from a process that has imported graphprune already, or as `python -m graphprune`."""
    work, temp = root / "work", root / "tmp"
    work.mkdir(parents=True)
    temp.mkdir()
    (temp / ".ses").write_bytes(ORT_SESSION_FILE)
    lay_out(case, work)
    before = _tree(root)
    started = time.perf_counter()
    execute = _fork if forked else _subprocess
    code, stderr = execute(case.argv, work, temp, root / "stderr.txt", timeout)
    outcome = Outcome(case, index, code, stderr, time.perf_counter() - started)
    outcome.problems = _problems(outcome, work, before, _tree(root))
    return outcome


def _tree(root: Path) -> dict[str, str]:
    return {f"{part}/{path}": digest for part in ("work", "tmp")
            for path, digest in snapshot(root / part).items()}  # fmt: skip


def _subprocess(argv, work: Path, temp: Path, _, timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp)}
    process = subprocess.Popen(
        [sys.executable, "-m", "graphprune", *argv], cwd=work, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
        preexec_fn=_limit_memory, start_new_session=True,
    )  # fmt: skip
    try:
        stderr = process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return None, process.communicate()[1]
    return process.returncode, stderr


def _fork(argv, work: Path, temp: Path, errors: Path, timeout: float) -> tuple[int | None, str]:
    process = _FORKSERVER.Process(target=_child, args=(argv, work, temp, errors))
    process.start()
    process.join(timeout)
    code = process.exitcode
    if process.is_alive():
        process.kill()
        process.join()
        code = None
    return code, errors.read_text(errors="replace") if errors.exists() else ""


def _child(argv: list[str], work: Path, temp: Path, errors: Path) -> None:
    """`python -m graphprune ARGV` in a forked process: same cwd, TMPDIR, memory limit and
    stderr; multiprocessing turns SystemExit into the exit status and prints the traceback
    of any other exception, as Python does."""
    os.chdir(work)
    os.environ["TMPDIR"] = str(temp)
    tempfile.tempdir = None
    _limit_memory()
    os.dup2(os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.argv = ["graphprune", *argv]
    runpy.run_module("graphprune", run_name="__main__", alter_sys=True)


def _problems(outcome: Outcome, work: Path, before: dict, after: dict) -> list[tuple[str, str]]:
    case, code = outcome.case, outcome.code
    if code is None:
        return [("hang", f"still running after {outcome.seconds:.0f} s")]
    problems = [("crash", why) for why in _exit_problems(case, code, outcome.stderr)]
    for path, digest in before.items():
        if after.get(path) != digest:
            problems.append(("input_modified", f"{path} changed or vanished"))
    created = set(after) - set(before)
    allowed = {f"work/{name}" for name in case.outputs} if code == 0 else set()
    problems += [("stray", f"left {path}") for path in sorted(created - allowed)]
    if code == 0:
        full = _inputs_pass_full_check(case)
        for name in case.outputs:
            if why := _invalid(work / name, full):
                problems.append(("crash", why))
    return problems


def _exit_problems(case: Case, code: int, stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    if "Traceback" in stderr:
        return ["traceback"]
    if code == 0:
        if case.must_fail:
            return ["accepted what must be refused"]
        return ["warning on stderr"] if "Warning" in stderr else []
    if code == 1:
        if len(lines) != 1 or not lines[0].startswith("graphprune:"):
            return [f"exit 1 with {len(lines)} stderr lines, not one 'graphprune:' line"]
        return []
    if code == 2:
        usage = bool(lines) and lines[0].startswith("usage:") and "error:" in lines[-1]
        return [] if usage else ["exit 2 without argparse's usage error"]
    return [f"exit code {code}"]


def _inputs_pass_full_check(case) -> bool:
    """Whether every input model passes the full checker: then the outputs must too, else
    the structural check (the rewrite keeps what its input passes, no more)."""
    for name, data in case.files.items():
        if name.endswith(".onnx"):
            try:
                onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
            except Exception:  # any failure: the input does not pass it
                return False
    return True


def _invalid(path: Path, full_check: bool = True) -> str | None:
    """Why a requested output is not valid (None when it is)."""
    if not path.is_file():
        return f"{path.name} missing after exit 0"
    try:
        if path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(path)), full_check=full_check)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".html" and "<html" not in path.read_text().lower():
            return f"{path.name} is not an HTML page"
    except Exception as error:  # any failure to read back is what we report
        return f"{path.name} is invalid: {str(error).splitlines()[0][:200]}"
    return None


def run_all(
    pairs: list[tuple[str, int]], seed: int, jobs: int, keep: Path | None = None,
    forked: bool = True,
) -> list[Outcome]:
    base = keep or Path(tempfile.mkdtemp(prefix="graphprune-fuzz-"))

    def one(item: tuple[int, tuple[str, int]]) -> Outcome:
        number, (kind, index) = item
        folder = base / f"{number:05d}-{kind}-{index}"
        outcome = run_case(make_case(kind, index, seed), index, folder, forked=forked)
        if keep is None:
            _remove(folder)
        return outcome

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(one, enumerate(pairs)))
    if keep is None:
        _remove(base)
    return outcomes


def _remove(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:  # read-only folders cannot be emptied
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


def summary(outcomes: list[Outcome]) -> str:
    counts = {kind: 0 for kind in KINDS}
    for outcome in outcomes:
        for kind in {kind for kind, _ in outcome.problems}:
            counts[kind] += 1
    word = "ok clean" if not any(counts.values()) else "FAIL"
    return f"cases={len(outcomes)} {word} " + " ".join(f"{k}={v}" for k, v in counts.items())


def describe(outcome: Outcome) -> str:
    case = outcome.case
    kinds = ", ".join(sorted({kind for kind, _ in outcome.problems}))
    lines = [
        f"FAIL [{kinds}] {case.kind} #{outcome.index}: {case.name} (exit {outcome.code})",
        "  $ python -m graphprune " + " ".join(case.argv),
        *(f"  - {why}" for _, why in outcome.problems),
        *(f"  | {line}" for line in outcome.stderr.strip().splitlines()[-6:]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=sorted(CLASSES), help="one mutation class")
    parser.add_argument("--keep", type=Path, help="keep the case folders here")
    parser.add_argument(
        "--subprocess", action="store_true",
        help="run each case as `python -m graphprune` (slower: start-up in every case)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the mutation classes")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CLASSES))
        return 0
    started = time.perf_counter()
    pairs = schedule(args.cases, args.only)
    outcomes = run_all(pairs, args.seed, args.jobs, args.keep, forked=not args.subprocess)
    failed = [o for o in outcomes if o.problems]
    for outcome in failed:
        print(describe(outcome))
    print(f"# {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(summary(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
