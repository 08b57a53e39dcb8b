"""ONNX's own backend test models through `graphprune prune --ratio 0.3` (issue 18): every
model of `onnx/backend/test/data/{light,pytorch-converted,pytorch-operator,simple}` that
ships with the onnx wheel (nothing to download) and that onnxruntime runs.

Each model goes through the real command line in its own process, as a user runs it:
`python -m graphprune prune model.onnx -o out.onnx --ratio 0.3 --report r.json`. Then:

- exit 1 with one `graphprune:` line and nothing written: a clean refusal;
- exit 0: the written model must be valid, judged without graphprune's code:
  the ONNX checker as strict as the input passes (full = with strict shape inference),
  onnxruntime loads it and runs it on the original's test inputs (the folder's
  `test_data_set_0/input_*.pb`; seeded random ones for `light`, which ships none), fed
  exactly the original's required inputs, and onnxruntime reports the same inputs
  (names, types, shapes) and outputs (names, types, shapes) as for the original.
  Otherwise the output is *invalid* (the failure this tool counts);
- anything else (a traceback, another exit code, a time-out): a crash.

"pruned" counts valid outputs with fewer parameters than the input (the report's count).

    python tools/bench_backend.py                       # all four sets, 2 jobs
    python tools/bench_backend.py --set light --json out.json
    python tools/bench_backend.py --graphprune /path/to/other/checkout   # another tree
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from benchkit.tables import markdown
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SETS = ("light", "pytorch-converted", "pytorch-operator", "simple")
RATIO = 0.3


@dataclass(frozen=True)
class Case:
    set: str
    name: str
    model: Path
    inputs: tuple[Path, ...]  # test_data_set_0/input_*.pb, in order (none for light)


def cases(sets: tuple[str, ...]) -> list[Case]:
    found = []
    for name in sets:
        folder = DATA / name
        if name == "light":
            found += [Case(name, p.stem, p, ()) for p in sorted(folder.glob("*.onnx"))]
            continue
        for case in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
            pbs = sorted(
                (case / "test_data_set_0").glob("input_*.pb"),
                key=lambda p: int(p.stem.split("_")[1]),
            )
            found.append(Case(name, case.name, case / "model.onnx", tuple(pbs)))
    return found


def _session(path: Path):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a model it refuses is an answer, not news
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _signature(sess) -> tuple[list, list]:
    def ports(values):
        return [(v.name, v.type, list(v.shape)) for v in values]

    return ports(sess.get_inputs()), ports(sess.get_outputs())


def feeds_of(case: Case, sess) -> dict[str, np.ndarray]:
    """The folder's test inputs by the names onnxruntime asks for (in order), or seeded
    random ones of the declared shapes (light: one image)."""
    inputs = sess.get_inputs()
    if case.inputs:
        arrays = []
        for path in case.inputs:
            tensor = onnx.TensorProto()
            tensor.ParseFromString(path.read_bytes())
            arrays.append(numpy_helper.to_array(tensor))
        return {info.name: value for info, value in zip(inputs, arrays, strict=False)}
    rng = np.random.default_rng(0)
    return {
        info.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in info.shape])
        .astype(np.float32)
        for info in inputs
    }


def _level(model: onnx.ModelProto) -> str:
    for level, full in (("full", True), ("structure", False)):
        try:
            onnx.checker.check_model(model, full_check=full)
            return level
        except Exception:  # any checker failure: not this level
            continue
    return "none"


def _passes(model: onnx.ModelProto, level: str) -> str | None:
    if level == "none":
        return None
    try:
        onnx.checker.check_model(model, full_check=level == "full")
    except Exception as error:  # the failure is the answer
        return f"checker ({level}): {str(error).splitlines()[0][:160]}"
    return None


def judge(case: Case, out: Path, feeds: dict[str, np.ndarray], signature) -> str | None:
    """Why the written model is invalid (None: it is valid)."""
    try:
        written = onnx.load(str(out))
    except Exception as error:  # unreadable output
        return f"cannot read the output: {str(error).splitlines()[0][:160]}"
    problem = _passes(written, _level(onnx.load(str(case.model))))
    if problem:
        return problem
    try:
        sess = _session(out)
    except Exception as error:  # onnxruntime refuses it
        return f"onnxruntime cannot load it: {str(error).splitlines()[0][:160]}"
    found = _signature(sess)
    if found[0] != signature[0]:
        return f"inputs changed: {signature[0]} -> {found[0]}"
    if found[1] != signature[1]:
        return f"outputs changed: {signature[1]} -> {found[1]}"
    try:
        sess.run(None, feeds)
    except Exception as error:  # does not run on the original's inputs
        return f"does not run on the original's inputs: {str(error).splitlines()[0][:160]}"
    return None


def evaluate(case: Case, root: Path, timeout: int) -> dict:
    row = {"set": case.set, "model": case.name}
    try:
        original = _session(case.model)
        feeds = feeds_of(case, original)
        original.run(None, feeds)
        signature = _signature(original)
    except Exception as error:  # not a model onnxruntime runs: not counted
        return {**row, "status": "not-run", "reason": str(error).splitlines()[0][:160]}
    with tempfile.TemporaryDirectory(prefix="backend-") as folder:
        out, report = Path(folder) / "out.onnx", Path(folder) / "report.json"
        command = [sys.executable, "-m", "graphprune", "prune", str(case.model), "-o", str(out),
                   "--ratio", str(RATIO), "--report", str(report), "--quiet"]  # fmt: skip
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=root, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {**row, "status": "crash", "reason": f"timeout after {timeout} s"}
        row["wall_s"] = round(time.perf_counter() - started, 2)
        stderr = [line for line in done.stderr.splitlines() if line.strip()]
        if done.returncode == 1 and len(stderr) == 1 and stderr[0].startswith("graphprune:"):
            if out.exists() or report.exists():
                return {**row, "status": "crash", "reason": "refused but wrote outputs"}
            return {**row, "status": "refused", "reason": stderr[0][:200]}
        if done.returncode != 0:
            tail = stderr[-1][:200] if stderr else ""
            return {**row, "status": "crash", "reason": f"exit {done.returncode}: {tail}"}
        problem = judge(case, out, feeds, signature)
        if problem is not None:
            return {**row, "status": "invalid", "reason": problem}
        params = json.loads(report.read_text())["params"]
        pruned = params["after"] < params["before"]
        return {**row, "status": "valid", "pruned": pruned, "params": params}


def summary(rows: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for key, row in [*((r["set"], r) for r in rows), *(("all", r) for r in rows)]:
        counts = table.setdefault(key, dict.fromkeys(
            ("run", "valid", "pruned", "refused", "invalid", "crash", "not-run"), 0))  # fmt: skip
        counts[row["status"]] += 1
        counts["pruned"] += bool(row.get("pruned"))
        counts["run"] += row["status"] != "not-run"
    return table


def summary_table(table: dict[str, dict[str, int]]) -> str:
    keys = ("run", "valid", "pruned", "refused", "invalid", "crash", "not-run")
    return markdown(
        {"set": f"**{name}**" if name == "all" else name, **{k: counts[k] for k in keys}}
        for name, counts in table.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--model", nargs="+", help="only these test names")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per model")
    parser.add_argument("--graphprune", type=Path, default=REPO,
                        help="the checkout whose `python -m graphprune` runs")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    chosen = [c for c in cases(tuple(args.set)) if not args.model or c.name in args.model]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: evaluate(c, args.graphprune, args.timeout), chosen))
    for row in rows:
        if row["status"] not in ("valid", "not-run"):
            print(f"{row['set']}/{row['model']}: {row['status']}: {row['reason']}")
    table = summary(rows)
    print(summary_table(table))
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": table, "rows": rows}, indent=1))
    bad = sum(row["status"] in ("invalid", "crash") for row in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
