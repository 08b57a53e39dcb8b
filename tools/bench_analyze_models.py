"""Analysis time on real models: `gp.analyze` on every cached model of the zoo, the
transformers zoo, the onnxruntime-fused transformers, the mixture-of-experts exports and
the third-party files already in `$GRAPHPRUNE_THIRDPARTY_CACHE` (nothing is exported or
downloaded: a model not in its cache is left out).

Each model is loaded once (`gp.load`), analyzed once untimed (the first analysis of a
dynamic graph imports sympy for onnxruntime's symbolic shape inference), then timed as
the best of `--repeats` analyses. `--baseline DIR` times another checkout of graphprune
(a `git worktree` of the old commit) side by side: the two trees run in alternating
subprocesses, `--rounds` times each, and each model's best time over all rounds is
reported, so load on a shared machine falls on both alike. `--clock cpu` times the
process's CPU seconds instead of wall seconds (the analysis is single-threaded): on a
machine shared by many jobs, wall times vary several-fold from run to run.

    python tools/bench_analyze_models.py                                # this tree
    python tools/bench_analyze_models.py --baseline /tmp/base --rounds 3 --repeats 3
    python tools/bench_analyze_models.py --baseline /tmp/base --clock cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from benchkit import records  # noqa: E402
from benchkit.tables import markdown  # noqa: E402
from benchkit.timing import best_of  # noqa: E402

GOAL_S = 0.5  # per model


def model_paths() -> dict[str, Path]:
    """Cached files by name, in a fixed order (imports torch: the caches are named by
    a fingerprint of the exporter sources)."""
    sys.path[:0] = [str(REPO), str(REPO / "tools")]
    import fused_models
    import thirdparty

    from models import export, moe_zoo, transformers_zoo, zoo

    def stem(name: str) -> str:
        return f"{name}.{export.source_fingerprint()}.onnx"

    found: dict[str, Path] = {}
    for name in zoo.ZOO:
        for exporter in export.EXPORTERS:
            found[f"{name}.{exporter}"] = export.cache_dir() / stem(f"{name}.{exporter}")
    for name, entry in transformers_zoo.TRANSFORMERS.items():
        for exporter in entry.exporters:
            found[f"tx-{name}.{exporter}"] = export.cache_dir() / stem(f"tx-{name}.{exporter}")
    for name, entry in moe_zoo.MOE.items():
        for exporter in entry.exporters:
            found[f"moe-{name}.{exporter}"] = export.cache_dir() / stem(f"moe-{name}.{exporter}")
    for name in fused_models.FUSED:
        fingerprint = fused_models._fingerprint()
        found[f"fused-{name}"] = export.cache_dir() / f"fused-{name}.{fingerprint}.onnx"
    for name, entry in thirdparty.MODELS.items():
        path = thirdparty.cache_dir() / f"{entry.package}-{entry.version}" / entry.filename
        found[f"thirdparty-{name}"] = path
    return {name: path for name, path in found.items() if path.is_file()}


def worker(tree: Path, paths: dict[str, str], repeats: int, clock: str) -> dict[str, list]:
    """In a subprocess importing graphprune from `tree`: {model: [nodes, best seconds]}."""
    sys.path.insert(0, str(tree))
    import graphprune as gp

    now = time.process_time if clock == "cpu" else time.perf_counter
    assert Path(gp.__file__).resolve().is_relative_to(tree.resolve()), gp.__file__
    times = {}
    for name, path in paths.items():
        model = gp.load(path)
        gp.analyze(model)
        best, _ = best_of(lambda m=model: gp.analyze(m), repeats, clock=now)
        times[name] = [len(model.graph.node), best]
    return times


def run_worker(tree: Path, paths: dict[str, Path], repeats: int, clock: str) -> dict[str, list]:
    request = json.dumps({"tree": str(tree), "paths": {k: str(v) for k, v in paths.items()}})
    done = subprocess.run(
        [sys.executable, __file__, "--worker", "--repeats", str(repeats), "--clock", clock],
        input=request, capture_output=True, text=True, check=True, cwd=tree,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another graphprune checkout to compare")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per tree")
    parser.add_argument("--repeats", type=int, default=3, help="analyses per model per run")
    parser.add_argument("--only", nargs="+", default=[], help="model names (prefix match)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        request = json.loads(sys.stdin.read())
        found = worker(Path(request["tree"]), request["paths"], args.repeats, args.clock)
        print(json.dumps(found))
        return 0
    paths = model_paths()
    if args.only:
        paths = {k: v for k, v in paths.items() if any(k.startswith(p) for p in args.only)}
    trees = {"after": REPO} if args.baseline is None else {"before": args.baseline, "after": REPO}
    best: dict[str, dict[str, float]] = {label: {} for label in trees}
    nodes: dict[str, int] = {}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for name, (count, seconds) in run_worker(tree, paths, args.repeats, args.clock).items():
                nodes[name] = count
                best[label][name] = min(best[label].get(name, float("inf")), seconds)
    print("command: python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]))
    print(
        f"{len(paths)} models; {args.clock} seconds of gp.analyze, best of {args.rounds} "
        f"round(s) x {args.repeats} analyses\n"
    )
    labels = list(trees)
    rows = [
        {
            "model": name,
            "nodes": nodes[name],
            **{f"{label} s": best[label][name] for label in labels},
        }
        for name in paths
    ]
    print(markdown(rows, floatfmt=".3f"))
    for row in rows:
        records.emit(row)
    for label in labels:
        values = list(best[label].values())
        slowest = max(best[label], key=best[label].get)
        print(
            f"\n{label}: total {sum(values):.2f} s, slowest {slowest} {best[label][slowest]:.3f} s"
            f" ({'meets' if best[label][slowest] <= GOAL_S else 'MISSES'} the {GOAL_S} s goal)"
        )
    if args.baseline is not None:
        ratio = sum(best["after"].values()) / sum(best["before"].values())
        print(f"after / before (total): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
