"""The hostile-input suite: graphprune's command line on malformed models, files and options.

From a few small valid models (`tools/fuzz_models.py`: a conv net, an MLP with attention, one
with an If, one with a Loop, the conv net with external data, variants with zero-sized
dims) and the model-zoo classics shipped with onnx (IR 3, opset 9) it derives hostile cases
(`tools/fuzz_cases.py`: corrupt protobuf, external data that is missing, out of range or
outside the model's folder, cycles, dangling and duplicate names, wrong weight dims, absurd
dims, NaN weights, unknown ops, ancient and future versions, empty graphs, broken subgraphs,
a Loop that would run for days, and misuse of every option and input file;
`tools/fuzz_paths.py`: hostile paths for every input and output and for external data,
zero-sized dims, the zoo models as they are and mutated), lays each out
in a fresh folder and runs the real command, `python -m graphprune ...`, there in its own
process with a time limit. Every case must end with

- exit 0 and valid outputs (models pass the ONNX checker as fully as the input does, JSON
  parses, HTML is a page), or
  a refusal: exit 1 and exactly one line on stderr starting with `graphprune:`, or
  argparse's usage error (exit 2). Cases marked `must_fail` (bad options, outputs onto
  inputs, external data outside the model's folder...) must be refused;
- within the time limit (no hang);
- every file that existed before byte-identical after (no input modified);
- nothing new in the folder, in its TMPDIR or in its HOME (each case has its own, with
  XDG_CACHE_HOME and the like inside it) but the requested outputs, and nothing at all
  when the command failed (no stray files); the fork server that starts the cases runs
  with a HOME and TMPDIR of its own, which must stay empty too;
- a written model passes exactly the checks its input passes (the full check with shape
  inference when the input passes it) and keeps the input's interface: the inputs it
  requires (graph inputs without an initializer; in IR < 4 every initializer is a graph
  input too) with their types and dims, and its outputs' names and types.

Cases run as root run without root's override of file permissions (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped): an unreadable file or a read-only folder is then what it is
for any user.

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
import atexit
import ctypes
import hashlib
import json
import multiprocessing
import os
import resource
import runpy
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
# A case still running after this long is a hang. Legitimate heavy cases (calibrating an
# input declared 10^6 pixels tall: 15 s of CPU) took 54 s on a shared machine at load 16.
HANG_S = 120.0
MEMORY_LIMIT = 8 * 2**30  # address space per case: an attempt to allocate terabytes fails
KINDS = ("crash", "hang", "stray", "input_modified")
# Where programs write on their own: each case gets these inside its own HOME.
XDG = {"XDG_CACHE_HOME": ".cache", "XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share",
       "XDG_STATE_HOME": ".local/state"}  # fmt: skip
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
# Set by graphprune itself on import (onnxruntime's telemetry off): never inherited by a
# case from the process that runs the suite, where an import of graphprune has set it.
PRODUCT_SWITCHES = ("ORT_DISABLE_TELEMETRY",)


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
    for relative in case.fifos:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(folder / relative)
    for relative in case.readonly:
        (folder / relative).mkdir(parents=True, exist_ok=True)
        (folder / relative).chmod(0o555)
    for relative, mode in sorted(case.modes.items(), key=lambda item: -len(item[0])):
        (folder / relative).chmod(mode)  # inner paths first: a locked folder comes last


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash (links: their target; FIFOs and other
    special files: their type, never opened)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            relative = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[relative] = f"link:{os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = f"dir:{stat.S_IMODE(info.st_mode):o}"
            elif not stat.S_ISREG(info.st_mode):
                found[relative] = f"special:{stat.S_IFMT(info.st_mode):o}"
            else:
                found[relative] = f"{stat.S_IMODE(info.st_mode):o}:{_digest(path)}"
    return found


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except PermissionError:  # a mode-000 file when the fuzzer is not root
        info = path.stat()
        return f"unreadable:{info.st_size}:{info.st_mtime_ns}"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(
    case: Case, index: int, root: Path, timeout: float = HANG_S, forked: bool = True,
    environment: dict[str, str] | None = None,
) -> Outcome:
    """Run one case in `root` (a fresh folder: `work` is the command's, `tmp` its TMPDIR,
    `home` its HOME), forked from a process that has imported graphprune already, or as
    `python -m graphprune` (with `environment` on top of its own, for the self-tests)."""
    work, temp, home = root / "work", root / "tmp", root / "home"
    for folder in (work, temp, home):
        folder.mkdir(parents=True)
    lay_out(case, work)
    before = _tree(root)
    started = time.perf_counter()
    env = {**_environment(temp, home), **(environment or {})}
    execute = _fork if forked else _subprocess
    code, stderr = execute(case.argv, work, env, root / "stderr.txt", timeout)
    outcome = Outcome(case, index, code, stderr, time.perf_counter() - started)
    outcome.problems = _problems(outcome, work, before, _tree(root))
    return outcome


def _environment(temp: Path, home: Path) -> dict[str, str]:
    """TMPDIR, HOME and the XDG folders of one case (all inside its own folders)."""
    return {"TMPDIR": str(temp), "HOME": str(home),
            **{name: str(home / folder) for name, folder in XDG.items()}}  # fmt: skip


def _tree(root: Path) -> dict[str, str]:
    return {f"{part}/{path}": digest for part in ("work", "tmp", "home")
            for path, digest in snapshot(root / part).items()}  # fmt: skip


def _case_limits() -> None:
    """In the case's process: the memory limit, and root's override of file permissions
    dropped (so a mode-000 file cannot be read, a read-only folder not written)."""
    _limit_memory()
    if os.geteuid() == 0:
        _drop_capabilities(_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH)


def _drop_capabilities(*capabilities: int) -> None:
    """Remove capabilities from this process's effective set (capset(2); always allowed)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for capability in capabilities:
        data[capability // 32].effective &= ~(1 << capability % 32)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _inherited() -> dict[str, str]:
    """This process's environment for a case, less the switches that graphprune must set
    itself (a user's shell does not have them; graphprune imported here sets them)."""
    return {name: value for name, value in os.environ.items() if name not in PRODUCT_SWITCHES}


def _subprocess(argv, work: Path, env: dict, _, timeout: float) -> tuple[int | None, str]:
    env = {**_inherited(), "PYTHONPATH": str(REPO), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "graphprune", *argv], cwd=work, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
        preexec_fn=_case_limits, start_new_session=True,
    )  # fmt: skip
    try:
        stderr = process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return None, process.communicate()[1]
    return process.returncode, stderr


def _fork(argv, work: Path, env: dict, errors: Path, timeout: float) -> tuple[int | None, str]:
    _start_server()
    process = _FORKSERVER.Process(target=_child, args=(argv, work, env, errors))
    process.start()
    process.join(timeout)
    code = process.exitcode
    if process.is_alive():
        process.kill()
        process.join()
        code = None
    return code, errors.read_text(errors="replace") if errors.exists() else ""


def _child(argv: list[str], work: Path, env: dict, errors: Path) -> None:
    """`python -m graphprune ARGV` in a forked process: same cwd, environment, limits and
    stderr; multiprocessing turns SystemExit into the exit status and prints the traceback
    of any other exception, as Python does, and the exit functions run as at the end of
    an interpreter (multiprocessing's children skip them)."""
    os.chdir(work)
    os.environ.update(env)
    tempfile.tempdir = None
    _case_limits()
    os.dup2(os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.argv = ["graphprune", *argv]
    try:
        runpy.run_module("graphprune", run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()


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
        source = _source_model(case, work)
        level = _check_level(source) if source else "full"
        for name in case.outputs:
            why = _invalid(work / name, level)
            if why is None and name.endswith(".onnx") and source is not None:
                why = _interface(source, work / name, case.argv)
            if why is not None:
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
    if case.must_succeed:
        return [f"refused what must work (exit {code})"]
    if code == 1:
        if len(lines) != 1 or not lines[0].startswith("graphprune:"):
            return [f"exit 1 with {len(lines)} stderr lines, not one 'graphprune:' line"]
        return []
    if code == 2:
        usage = bool(lines) and lines[0].startswith("usage:") and "error:" in lines[-1]
        return [] if usage else ["exit 2 without argparse's usage error"]
    return [f"exit code {code}"]


def _source_model(case: Case, work: Path) -> Path | None:
    """The model `prune` read (its written model is compared with it)."""
    if len(case.argv) > 1 and case.argv[0] == "prune" and (work / case.argv[1]).is_file():
        return work / case.argv[1]
    return None


def _check_level(path: Path) -> str:
    """The strongest ONNX check the model at `path` passes: "full" (with shape inference),
    "plain", or "none" (checked by path: external data is found next to it)."""
    for level, full in (("full", True), ("plain", False)):
        try:
            onnx.checker.check_model(str(path), full_check=full)
            return level
        except Exception:  # any failure: it does not pass this level
            continue
    return "none"


def _invalid(path: Path, level: str = "full") -> str | None:
    """Why a requested output is not valid (None when it is): a model must pass the checks
    at `level` (those its input passes), JSON parse, HTML be a page."""
    if not path.is_file():
        return f"{path.name[:60]} missing after exit 0"
    try:
        if path.suffix == ".onnx" and level == "none":
            onnx.load(str(path), load_external_data=False)
        elif path.suffix == ".onnx":
            onnx.checker.check_model(str(path), full_check=level == "full")
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".html" and "<html" not in path.read_text().lower():
            return f"{path.name[:60]} is not an HTML page"
    except Exception as error:  # any failure to read back is what we report
        check = f" ({level} check, as its input passes)" if path.suffix == ".onnx" else ""
        return f"{path.name[:60]} is invalid{check}: {str(error).splitlines()[0][:200]}"
    return None


def _interface(source: Path, written: Path, argv: list[str]) -> str | None:
    """How the written model's interface differs from its source's (None: it does not):
    the inputs a caller must feed (graph inputs without an initializer), their element
    types and dims; the outputs' names and types, and their dims unless --prune-outputs."""
    try:
        before = onnx.load(str(source), load_external_data=False).graph
    except Exception:  # a source that does not parse has no interface to keep
        return None
    after = onnx.load(str(written), load_external_data=False).graph  # read back by _invalid
    wanted, given = _signature(before, inputs=True), _signature(after, inputs=True)
    if wanted != given:
        return f"inputs to feed changed: {_difference(wanted, given)}"
    keep_dims = "--prune-outputs" not in argv
    wanted = _signature(before, inputs=False, dims=keep_dims)
    given = _signature(after, inputs=False, dims=keep_dims)
    if wanted != given:
        return f"outputs changed: {_difference(wanted, given)}"
    return None


def _signature(graph: onnx.GraphProto, inputs: bool, dims: bool = True) -> dict[str, tuple]:
    initializers = {tensor.name for tensor in graph.initializer}
    infos = [i for i in graph.input if i.name not in initializers] if inputs else graph.output
    signature = {}
    for info in infos:
        tensor = info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                 for d in tensor.shape.dim] if tensor.HasField("shape") else None  # fmt: skip
        signature[info.name] = (tensor.elem_type, tuple(shape) if dims and shape else None)
    return signature


def _difference(wanted: dict, given: dict) -> str:
    missing = sorted(set(wanted) - set(given))
    extra = sorted(set(given) - set(wanted))
    changed = sorted(n for n in set(wanted) & set(given) if wanted[n] != given[n])
    parts = [f"{what} {names[:3]}" for what, names in
             (("missing", missing), ("new", extra), ("changed", changed)) if names]  # fmt: skip
    return "; ".join(parts)


def run_all(
    pairs: list[tuple[str, int]], seed: int, jobs: int, keep: Path | None = None,
    forked: bool = True,
) -> list[Outcome]:
    base = keep or Path(tempfile.mkdtemp(prefix="graphprune-fuzz-"))
    server = base / "server"
    watched = forked and _start_server(server)

    def one(item: tuple[int, tuple[str, int]]) -> Outcome:
        number, (kind, index) = item
        folder = base / f"{number:05d}-{kind}-{index}"
        case = make_case(kind, index, seed)
        outcome = run_case(case, index, folder, case.timeout or HANG_S, forked=forked)
        if keep is None:
            _remove(folder)
        return outcome

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(one, enumerate(pairs)))
    if watched and (left := _server_strays(server)):
        case = Case("fork_server", "imports of the fork server", ["(preload)"])
        outcomes.append(Outcome(case, -1, 0, "", 0.0, [("stray", f"left {p}") for p in left]))
    if keep is None:
        _remove(base)
    return outcomes


def _start_server(folder: Path | None = None) -> bool:
    """Start the fork server (unless it runs: False) in this process's environment less
    PRODUCT_SWITCHES, with a HOME, XDG folders and TMPDIR of its own in `folder` when
    given, so that what its imports write (onnxruntime's telemetry, for one) shows."""
    from multiprocessing import forkserver

    if getattr(forkserver._forkserver, "_forkserver_pid", None) is not None:
        return False
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_inherited())
    if folder is not None:
        (folder / "tmp").mkdir(parents=True)
        (folder / "home").mkdir()
        os.environ.update(_environment(folder / "tmp", folder / "home"))
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return True


def _server_strays(folder: Path) -> list[str]:
    """What the fork server left in its HOME and TMPDIR (multiprocessing's own pymp-*
    folder aside)."""
    created = [f"{part}/{path}" for part in ("tmp", "home")
               for path in snapshot(folder / part)]  # fmt: skip
    return sorted(path for path in created if not path.startswith("tmp/pymp-"))


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
    by_class = Counter(outcome.case.kind for outcome in failed)
    print(f"# {time.perf_counter() - started:.0f} s; failing cases by class: "
          f"{dict(sorted(by_class.items())) or 'none'}", file=sys.stderr)  # fmt: skip
    print(summary(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
