"""Transformers benchmark: params, MACs and onnxruntime latency before and after pruning
attention heads and MLP widths, for every covered export (models/transformers_zoo.py)
and every fused graph (tools/fused_models.py: onnxruntime's transformer optimizer, and
LLaMA/Qwen2 with GroupQueryAttention as onnxruntime-genai's builder writes them).

    python tools/bench_transformers.py [--ratio 0.3] [--repeats 50] [--threads 1] [--fused-only]

Latency: CPU provider, fixed intra-op threads, original and pruned timed alternately in
one process (graphprune.validation.bench), medians; text models at batch 1 x 64 tokens
and ViT at batch 8.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fused_models import FUSED
from fused_models import cached as fused_cached

import graphprune as gp
from graphprune.core.metrics import count_macs, count_params
from graphprune.runtime.latency import bench
from models.transformers_zoo import TRANSFORMERS, VOCAB, cached


def feeds_for(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if TRANSFORMERS[name].is_text:
        return {"input": rng.integers(0, VOCAB, (1, 64)).astype(np.int64)}
    return {"input": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fused-only", action="store_true", help="only the fused graphs")
    parser.add_argument("--models", nargs="+", metavar="LABEL",
                        help="only these rows (model/exporter or model/fused, prefix match)")
    args = parser.parse_args(argv)
    print(
        f"ratio {args.ratio} (l2, per group), median of {args.repeats}, "
        f"{args.threads} onnxruntime thread(s)"
    )
    header = (
        f"{'model':<24} {'groups':>7} {'params':>10} {'->':>10} {'heads':>5} {'mlp':>5} "
        f"{'MMACs':>7} {'->':>7} {'ms':>7} {'->':>7} {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    # Paths are exported (or read from the cache) only for the rows that run.
    rows = [] if args.fused_only else [
        (f"{name}/{exporter}", lambda n=name, e=exporter: cached(n, e), feeds_for(name))
        for name, entry in TRANSFORMERS.items()
        for exporter in entry.exporters
    ]  # fmt: skip
    for name, entry in FUSED.items():
        if entry.cache:  # fed a KV cache too: tests/test_kv_cache.py
            continue
        feeds = feeds_for(entry.base)
        if entry.has_mask:
            feeds["mask"] = np.ones_like(feeds["input"])
        rows.append((f"{name}/fused", lambda n=name: fused_cached(n), feeds))
    if args.models:
        rows = [row for row in rows if any(row[0].startswith(m) for m in args.models)]
    for label, path, feeds in rows:
        model = gp.load(path())
        analysis = gp.analyze(model)
        plan = gp.plan(analysis, args.ratio)
        pruned = gp.prune(analysis, plan)
        shapes = {key: value.shape for key, value in feeds.items()}
        kinds = [group.kind for group in analysis.prunable_groups]
        found = f"{kinds.count('heads')}h+{kinds.count('mlp')}m"
        removed = {"heads": 0, "mlp": 0}
        for choice in plan.choices:
            kind = analysis.groups[choice.group].kind
            removed[kind] = removed.get(kind, 0) + len(choice.removed)
        timing = bench(model, pruned, feeds, args.repeats, "CPUExecutionProvider", args.threads)
        print(
            f"{label:<24} {found:>7} {count_params(model):>10,} "
            f"{count_params(pruned):>10,} {removed['heads']:>5} {removed['mlp']:>5} "
            f"{count_macs(model, shapes) / 1e6:>7.1f} {count_macs(pruned, shapes) / 1e6:>7.1f} "
            f"{timing['latency_ms_before']:>7.3f} {timing['latency_ms_after']:>7.3f} "
            f"{timing['speedup']:>7.2f}"
        )
    print("groups: prunable head (h) and MLP (m) groups found")
    print("heads / mlp: head groups (KV heads for GQA) and MLP channels removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
