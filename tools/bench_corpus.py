"""Corpus benchmark (issue 9): every (model, variant) of the real-world corpus
(`tools/corpus/`), analyzed, pruned at 0.3 and 0.5, validated in onnxruntime and checked
against the masking oracle, with pass rates per source and per variant.

A (model, variant) passes when it prunes validly at 0.5 and matches the oracle; one with no
prunable group passes as "blocked" when `analyze` names the barrier of every group. Export
failures are listed but not counted against graphprune. Each model runs in its own
subprocess with a time limit and a memory cap (`--timeout` per variant, `--mem-gb`).

    python tools/bench_corpus.py --list
    python tools/bench_corpus.py --quick
    python tools/bench_corpus.py --source timm --variant classic --json out.json
    python tools/bench_corpus.py --jobs 2 --json /work/corpus-results.json \
        --failures /work/corpus-failures.md          # the whole corpus

`--json` is read first when it exists: results of other (model, variant)s are kept, so
subsets can be run one after another into one file. `--report-only` rewrites the tables
and the failures file from it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import corpus  # noqa: E402
from corpus.report import failures_markdown, summary, tables  # noqa: E402

QUICK = {
    "torchvision/mobilenet_v3_small": ("classic", "dynamo", "dynquant"),
    "torchvision/resnet18": ("classic", "classic-dyn"),
    "timm/vit_tiny_patch16_224": ("classic", "dynamo"),
    "timm/convnext_atto": ("classic",),
    "transformers/bert": ("classic-dyn", "ortopt", "dynquant"),
    "transformers/llama": ("dynamo-dyn",),
    "thirdparty/ppocr_cls": ("file",),
}


def select(
    args: argparse.Namespace, done: set[tuple[str, str]]
) -> list[tuple[corpus.Entry, tuple[str, ...]]]:
    """(entry, variants) pairs chosen by the filters, in corpus order, without `done`."""
    chosen = []
    for entry in corpus.entries(tuple(args.source or corpus.SOURCES)):
        if args.quick and entry.name not in QUICK:
            continue
        if args.family and not any(fnmatch.fnmatch(entry.family, g) for g in args.family):
            continue
        if args.model and not any(fnmatch.fnmatch(entry.name, g) for g in args.model):
            continue
        variants = QUICK[entry.name] if args.quick else entry.variants
        variants = tuple(v for v in variants if not args.variant or v in args.variant)
        variants = tuple(v for v in variants if (entry.name, v) not in done)
        if variants:
            chosen.append((entry, variants))
    return chosen


def worker(name: str, variants: list[str], out: Path) -> None:
    """In the subprocess: one JSON line per stage reached ("at") and per finished variant."""
    entry = next(e for e in corpus.entries((name.split("/", 1)[0],)) if e.name == name)
    with out.open("a") as log:
        for variant in variants:
            log.write(json.dumps({"at": variant}) + "\n")
            log.flush()
            started = time.perf_counter()
            row = corpus.evaluate_path(entry, variant)
            row["wall_s"] = round(time.perf_counter() - started, 2)
            log.write(json.dumps(row) + "\n")
            log.flush()


def _limit_memory(gigabytes: float) -> None:
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_model(entry: corpus.Entry, variants: tuple[str, ...], args) -> list[dict[str, Any]]:
    """Run the worker for one model; variants it did not finish are recorded as crashes."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        out = Path(tmp) / "rows.jsonl"
        command = [
            sys.executable,
            __file__,
            "--worker",
            entry.name,
            "--worker-out",
            str(out),
            "--variant",
            *variants,
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(args.threads),
        }
        status = ""
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                timeout=args.timeout * len(variants),
                preexec_fn=lambda: _limit_memory(args.mem_gb),
            )
            if done.returncode:
                tail = [ln for ln in done.stderr.splitlines() if ln.strip()][-1:]
                status = f"worker exited {done.returncode}: {tail[0][:200] if tail else ''}"
        except subprocess.TimeoutExpired:
            status = f"timeout after {args.timeout * len(variants)} s"
        lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    rows = [line for line in lines if "model" in line]
    finished = {row["variant"] for row in rows}
    started = [line["at"] for line in lines if "at" in line]
    for variant in variants:
        if variant not in finished:
            reason = status if variant in started else "not reached (worker died earlier)"
            rows.append(
                {
                    "model": entry.name,
                    "source": entry.source,
                    "family": entry.family,
                    "variant": variant,
                    "status": "crash",
                    "failures": [{"ratio": None, "stage": "crash", "reason": reason}],
                }
            )
    return rows


def print_row(row: dict[str, Any]) -> None:
    removed = row.get("ratios", {}).get("0.5", {}).get("params_removed")
    text = f"{removed:6.1%}" if removed is not None else "     -"
    groups = f"{row.get('prunable', '-')}/{row.get('groups', '-')}"
    analysis = row.get("analysis_s")
    seconds = f"{analysis:7.2f}" if analysis is not None else "      -"
    print(
        f"{row['model']:<46} {row['variant']:<12} {row['status']:<13} {groups:>7} "
        f"{row.get('nodes', '-'):>6} {seconds} {text}",
        flush=True,
    )
    for failure in row.get("failures", []):
        print(f"    {failure['stage']} @ {failure['ratio']}: {failure['reason'][:160]}")
    if row.get("export_error"):
        print(f"    export failed: {row['export_error'][:160]}")


def load_results(path: Path | None) -> dict[tuple[str, str], dict[str, Any]]:
    if path is None or not path.exists():
        return {}
    rows = json.loads(path.read_text())["results"]
    return {(row["model"], row["variant"]): row for row in rows}


def save_results(
    path: Path | None, results: dict, failures: Path | None, notes: Path | None
) -> None:
    rows = sorted(results.values(), key=lambda r: (r["source"], r["model"], r["variant"]))
    if path is not None:
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(json.dumps({"summary": summary(rows), "results": rows}, indent=1))
        os.replace(staging, path)
    if failures is not None:
        extra = notes.read_text() if notes is not None and notes.is_file() else ""
        failures.write_text(failures_markdown(rows) + extra)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", nargs="+", choices=corpus.SOURCES)
    parser.add_argument("--family", nargs="+", help="family globs (resnet, vit*, ...)")
    parser.add_argument("--model", nargs="+", help="model globs (timm/vit_*, ...)")
    parser.add_argument("--variant", nargs="+", choices=list(corpus.VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="models in parallel")
    parser.add_argument("--threads", type=int, default=1, help="threads per model")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per variant")
    parser.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per model")
    parser.add_argument("--list", action="store_true", help="list the selection and exit")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK)} models")
    parser.add_argument("--json", type=Path, help="results file (read, merged, rewritten)")
    parser.add_argument("--failures", type=Path, help="write the failure classes (markdown)")
    parser.add_argument(
        "--notes", type=Path, help="markdown appended to --failures (default: its NAME.notes.md)"
    )
    parser.add_argument("--skip-done", action="store_true", help="skip results in --json")
    parser.add_argument("--report-only", action="store_true", help="only reprint --json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.failures is not None and args.notes is None:
        args.notes = args.failures.with_suffix(".notes.md")
    if args.worker:
        worker(args.worker, args.variant, args.worker_out)
        return 0
    results = load_results(args.json)
    if args.report_only:
        save_results(args.json, results, args.failures, args.notes)
        print("\n".join(tables(list(results.values()))))
        return 0
    # Export failures are retried: cheap while cached as failed, real once the cache is cleared.
    done = {key for key, row in results.items() if row["status"] in ("pass", "blocked", "fail")}
    chosen = select(args, done if args.skip_done else set())
    if args.list:
        for entry, variants in chosen:
            print(f"{entry.name:<46} {entry.family:<20} {' '.join(variants)}")
        print(f"{len(chosen)} models, {sum(len(v) for _, v in chosen)} (model, variant)s")
        return 0
    started = time.perf_counter()
    print(
        f"{'model':<46} {'variant':<12} {'status':<13} {'groups':>7} {'nodes':>6} "
        f"{'analyze':>7} params-%@0.5"
    )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_model, entry, variants, args) for entry, variants in chosen]
        for future in futures:
            for row in future.result():
                results[(row["model"], row["variant"])] = row
                print_row(row)
            save_results(args.json, results, args.failures, args.notes)
    print("\n".join(tables(list(results.values()))))
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
