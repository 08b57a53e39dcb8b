"""Diff-time benchmark: how long `graphprune diff` takes on synthetic graphs of 1k/5k nodes.

The model is `bench_analyze.synthetic_model` (residual Conv/Relu/Add blocks with channel
splits). Each size is diffed against three partners: an identical copy, a copy with every
node, tensor and initializer renamed (so matching must be structural), and the model
pruned at ratio 0.5 by graphprune (the diff then also analyzes A to attribute each change
to its group). The time is `diff_models` from the two ModelProtos to the finished result
(loading, shape inference, matching, comparison, attribution), best of `--repeats`.
The target is under 2 s for two 1,000-node models.

Command::

    python tools/bench_diff.py                 # 1k and 5k nodes
    python tools/bench_diff.py --sizes 1000 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import onnx  # noqa: E402
from bench_analyze import synthetic_model  # noqa: E402
from benchkit import records  # noqa: E402
from benchkit.timing import best_of  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.inspect.diff import diff_models, structural_changes  # noqa: E402

TARGET_1K_S = 2.0


def renamed(model: onnx.ModelProto, prefix: str = "r") -> onnx.ModelProto:
    """A copy with every node, intermediate tensor and initializer renamed (graph inputs
    and outputs keep their names, as a caller's interface would), in reversed numbering so
    that no name survives by accident."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    keep -= {t.name for t in graph.initializer}
    names: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"{prefix}_tensor_{len(names)}")

    count = len(graph.node)
    for index, node in enumerate(graph.node):
        node.name = f"{prefix}_node_{count - index}"
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for info in [*graph.input, *graph.value_info]:
        info.name = new(info.name)
    return copy


def partners(model: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    analysis = gp.analyze(model)
    pruned = gp.prune(analysis, gp.plan(analysis, 0.5), check=False)
    return {"identical": model, "renamed": renamed(model), "pruned": pruned}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'nodes':>6}  {'partner':<10} {'diff s':>7}  {'changed':>7}  {'added':>5}  "
          f"{'removed':>7}")  # fmt: skip
    worst_1k = 0.0
    for size in args.sizes:
        model = synthetic_model(size)
        for label, partner in partners(model).items():
            best, result = best_of(lambda m=model, p=partner: diff_models(m, p), args.repeats)
            totals = result["totals"]
            counts = f"{totals['changed']:>7}  {totals['added']:>5}  {totals['removed']:>7}"
            print(f"{len(model.graph.node):>6}  {label:<10} {best:>7.3f}  {counts}")
            records.emit({"nodes": len(model.graph.node), "partner": label, "diff_s": best,
                          **totals})  # fmt: skip
            if label != "pruned" and structural_changes(result):
                print(f"  unexpected structural change against the {label} copy")
                return 1
            if size <= 1000:
                worst_1k = max(worst_1k, best)
    if worst_1k:
        verdict = "meets" if worst_1k < TARGET_1K_S else "MISSES"
        print(f"slowest diff at <=1k nodes: {worst_1k:.3f} s ({verdict} the {TARGET_1K_S} s goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
