"""Analysis-time benchmark: how `gp.analyze` (and `gp.load`) scale with graph size.

A synthetic deep CNN is built directly with ``onnx.helper`` (opset 18, input 1x16x4x4):
a chain of residual blocks ``Conv1x1 -> Relu -> Conv1x1 -> Add(skip) -> Relu`` (5 nodes),
every fourth block followed by a split block ``Split(2, channel axis) -> Conv1x1 on each
half -> Concat`` (4 nodes), ending in ``GlobalAveragePool -> Flatten -> Gemm``. Blocks are
added until the graph has the requested node count (sizes 1k ... 50k nodes).

For each size the script prints the node count, the seconds of ``gp.load`` on the
ModelProto (copy, node naming, constant folding; shape inference only runs there when the
graph has Shape ops, which this one has not), the seconds of ``gp.analyze`` (GraphView:
onnx shape inference and a networkx graph, then the rule walk and grouping), both per 1k
nodes, and the number of groups found. The best of ``--repeats`` runs is reported. The
target is ``gp.analyze`` under 1 s for 10k nodes with near-linear scaling (constant s/1k).
``--profile N`` also prints a cProfile summary of ``gp.analyze`` at N nodes.

Command (the one used for BENCHMARKS.md)::

    python tools/bench_analyze.py                      # 1k 2k 5k 10k 20k 50k nodes
    python tools/bench_analyze.py --quick              # 1k 2k 5k 10k
    python tools/bench_analyze.py --sizes 10000 --profile 10000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphprune as gp  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
from benchkit import records  # noqa: E402
from benchkit.timing import timed  # noqa: E402

SIZES = [1000, 2000, 5000, 10000, 20000, 50000]
QUICK_SIZES = [1000, 2000, 5000, 10000]
CHANNELS = 16
TARGET_10K_S = 1.0


def synthetic_model(target_nodes: int, channels: int = CHANNELS, seed: int = 0):
    """A residual CNN with about `target_nodes` nodes (never fewer than 4)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[TensorProto] = []
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def conv(x: str, cin: int, cout: int) -> str:
        w = fresh("w")
        initializers.append(
            numpy_helper.from_array(
                rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) * 0.3, w
            )
        )
        b = fresh("b")
        initializers.append(
            numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, b)
        )
        y = fresh("t")
        nodes.append(helper.make_node("Conv", [x, w, b], [y], name=fresh("conv")))
        return y

    def op(op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        ys = [fresh("t") for _ in range(outputs)]
        nodes.append(helper.make_node(op_type, inputs, ys, name=fresh(op_type.lower()), **attrs))
        return ys

    x = conv("input", 3, channels)
    tail = 3  # GlobalAveragePool, Flatten, Gemm
    block = 0
    while len(nodes) + tail < target_nodes:
        block += 1
        if block % 4 == 0 and len(nodes) + tail + 4 <= target_nodes:
            halves = op("Split", [x], outputs=2, axis=1, num_outputs=2)
            parts = [conv(h, channels // 2, channels // 2) for h in halves]
            x = op("Concat", parts, axis=1)[0]
        elif len(nodes) + tail + 5 <= target_nodes:
            y = op("Relu", [conv(x, channels, channels)])[0]
            x = op("Relu", op("Add", [conv(y, channels, channels), x]))[0]
        else:
            x = op("Relu", [x])[0]
    pooled = op("GlobalAveragePool", [x])[0]
    flat = op("Flatten", [pooled], axis=1)[0]
    w = fresh("w")
    initializers.append(
        numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), w)
    )
    nodes.append(helper.make_node("Gemm", [flat, w], ["output"], name="head", transB=1))
    graph = helper.make_graph(
        nodes, "synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # what onnxruntime 1.2x reads (onnx 1.23 would write 14)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help=f"node counts (default {SIZES})")
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per size")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile gp.analyze at N nodes")
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)

    print("command: python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]))
    print(records.environment_line())
    print(
        f"synthetic residual CNN, {CHANNELS} channels, 1x1 convs, 4x4 maps; "
        f"best of {args.repeats} run(s)"
    )
    print()
    header = (
        f"{'nodes':>7} {'build s':>8} {'load s':>8} {'load s/1k':>9} "
        f"{'analyze s':>9} {'analyze s/1k':>12} {'groups':>7} {'prunable':>8}"
    )
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    results = []
    for size in sizes:
        build_s, model = timed(synthetic_model, size)
        n = len(model.graph.node)
        load_s = analyze_s = float("inf")
        for _ in range(args.repeats):
            t, loaded = timed(gp.load, model)
            load_s = min(load_s, t)
            t, analysis = timed(gp.analyze, loaded)
            analyze_s = min(analyze_s, t)
        results.append((n, analyze_s))
        records.emit({"nodes": n, "build_s": build_s, "load_s": load_s, "analyze_s": analyze_s,
                      "groups": len(analysis.groups),
                      "prunable": len(analysis.prunable_groups)})  # fmt: skip
        print(
            f"{n:>7} {build_s:8.2f} {load_s:8.3f} {load_s / n * 1000:9.4f} "
            f"{analyze_s:9.3f} {analyze_s / n * 1000:12.4f} {len(analysis.groups):>7} "
            f"{len(analysis.prunable_groups):>8}",
            flush=True,
        )
        del model, loaded, analysis
    print("-" * len(header))
    if len(results) >= 2:
        (n0, t0), (n1, t1) = results[0], results[-1]
        exponent = np.log(t1 / t0) / np.log(n1 / n0)
        print(
            f"scaling exponent (log-log slope of analyze time, {n0} -> {n1} nodes): "
            f"{exponent:.2f} (1.0 = linear)"
        )
    at_10k = [t for n, t in results if 9000 <= n <= 11000]
    if at_10k:
        verdict = "meets" if at_10k[0] < TARGET_10K_S else "MISSES"
        print(f"analyze at 10k nodes: {at_10k[0]:.3f} s ({verdict} the {TARGET_10K_S} s target)")
    print(f"total time {time.perf_counter() - started:.0f} s")

    if args.profile:
        loaded = gp.load(synthetic_model(args.profile))
        profiler = cProfile.Profile()
        profiler.enable()
        gp.analyze(loaded)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(f"\ncProfile of gp.analyze at {len(loaded.graph.node)} nodes (cumulative):")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
