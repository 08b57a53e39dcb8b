"""LLM-scale benchmark: wall time and peak RSS of graphprune on LLaMA-shaped models of
growing size (`tools/make_llm.py`, cached), next to the model's size on disk.

For each size the model is generated once (kept in `--cache`), then each command runs as
its own process and is measured from outside (`os.wait4`: the process's wall time and its
peak resident set size):

- `analyze`: `graphprune analyze MODEL`
- `prune`: `graphprune prune MODEL -o OUT --ratio 0.3 --only heads --only mlp`
- `unvalidated`: the same with `--no-validate` (no onnxruntime session: the streamed
  prune alone, as models too large to run here are pruned)
- `calibrated`: the same with `--criterion wanda --calib-random 8`
- after each prune, `check`: the pruned model loads in onnxruntime and runs on a batch of
  token ids (also measured), unless its session would not fit in the memory available
  (onnxruntime's CPU provider holds about twice a float16 model); the row says so.

Pruned models go to a temporary folder under `--cache` and are deleted after their check.

    python tools/bench_scale.py                          # 0.5B and 1B, float32
    python tools/bench_scale.py --sizes 0.5B 1B 3B:float16 7B:float16
    python tools/bench_scale.py --sizes 1B --stages prune --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("analyze", "prune", "unvalidated", "calibrated")
_CHECK = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(0, int(sys.argv[2]), (1, 16)).astype(np.int64)
logits = session.run(None, {"input_ids": ids})[0]
assert logits.shape == (1, 16, int(sys.argv[2])) and np.isfinite(logits).all(), logits.shape
print("runs", logits.shape)
"""


def measure(command: list[str], log: Path) -> dict:
    """Run `command`; its exit code, wall seconds and peak RSS (bytes), from outside."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "code": process.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # kilobytes on Linux
    }


def model_for(size: str, dtype: str, cache: Path) -> Path:
    folder = cache / f"{size}-{dtype}"
    path = folder / "llama.onnx"
    if not (path.is_file() and path.with_name("llama.onnx.data").is_file()):
        print(f"generating {size} {dtype} in {folder} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "tools" / "make_llm.py"), "--params", size,
                        "--dtype", dtype, "--out", str(folder)], check=True,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    return path


def disk_bytes(path: Path) -> int:
    """The .onnx file and its external data, when it has any (under 2 GB it has not)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def bench_size(size: str, dtype: str, cache: Path, stages: list[str]) -> list[dict]:
    sys.path.insert(0, str(REPO / "tools"))
    from make_llm import PRESETS

    config = PRESETS[size]
    path = model_for(size, dtype, cache)
    base = {"size": size, "dtype": dtype, "params": config.parameters(),
            "model_bytes": disk_bytes(path)}  # fmt: skip
    graphprune = [sys.executable, "-m", "graphprune"]
    rows = []
    with tempfile.TemporaryDirectory(dir=cache, prefix="bench-") as folder:
        work = Path(folder)
        for stage in stages:
            out = work / f"{stage}.onnx"
            if stage == "analyze":
                command = [*graphprune, "analyze", str(path)]
            else:
                command = [*graphprune, "prune", str(path), "-o", str(out), "--ratio", "0.3",
                           "--only", "heads", "--only", "mlp"]  # fmt: skip
                if stage == "calibrated":
                    command += ["--criterion", "wanda", "--calib-random", "8"]
                if stage == "unvalidated":  # the streamed prune alone, no onnxruntime
                    command += ["--no-validate"]
            log = work / f"{stage}.log"
            row = {**base, "stage": stage, **measure(command, log)}
            row["tail"] = log.read_text(errors="replace").strip().splitlines()[-3:]
            rows.append(row)
            print(_line(row), flush=True)
            if stage != "analyze" and row["code"] == 0:
                row["pruned_bytes"] = disk_bytes(out)
                why = _too_big_to_run(out)
                if why is not None:  # onnxruntime would take the machine's memory
                    print(f"      ort run of the pruned model skipped: {why}", flush=True)
                    row["ort_run_skipped"] = why
                else:
                    check = [sys.executable, "-c", _CHECK, str(out), str(config.vocab)]
                    checked = {**base, "stage": f"{stage}: ort run",
                               **measure(check, work / "check.log")}  # fmt: skip
                    checked["model_bytes"] = row["pruned_bytes"]
                    rows.append(checked)
                    print(_line(checked), flush=True)
            for leftover in work.glob(f"{stage}.onnx*"):
                leftover.unlink()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _too_big_to_run(path: Path) -> str | None:
    """Why an onnxruntime session of the model at `path` would not fit in memory here,
    asked in a child process: a child's peak RSS starts at its parent's RSS when it forks,
    so this process must never load graphprune or a model itself."""
    code = ("import sys, graphprune; from graphprune.runtime.sessions import too_big_to_run; "
            "print(too_big_to_run(graphprune.load(sys.argv[1]), 'CPUExecutionProvider') or '')")
    answer = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True,
                            capture_output=True, text=True)  # fmt: skip
    return answer.stdout.strip() or None


def _line(row: dict) -> str:
    gb = 1e9
    status = "ok" if row["code"] == 0 else f"FAILED ({row['code']}): {row.get('tail')}"
    return (f"{row['size']:>5} {row['dtype']:<8} {row['model_bytes'] / gb:7.2f} GB  "
            f"{row['stage']:<20} {row['wall_s']:7.1f} s  {row['peak_rss_bytes'] / gb:6.2f} GB  "
            f"{row['peak_rss_bytes'] / row['model_bytes']:5.2f}x  {status}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["0.5B", "1B"],
                        help="SIZE or SIZE:DTYPE (0.5B 1B 3B 7B; float32 or float16)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--cache", default="/tmp/llm", help="generated models (kept)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}")
    print(" size dtype     on disk   stage                   wall    peak RSS  RSS/size")
    rows = []
    for spec in args.sizes:
        size, _, dtype = spec.partition(":")
        rows += bench_size(size, dtype or "float32", cache, args.stages)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(row["code"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
