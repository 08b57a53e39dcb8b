"""Variants of one criterion on the real LLM, calibrated once: SmolLM2-135M-Instruct
(`tools/llm_real.py`) is analysed and calibrated once on the docstrings (`--calib-count`
sequences of 256 tokens, with X^T X for the least-squares repair), then every variant is
planned, repaired and pruned through the library's API in this process and judged by
held-out perplexity on the READMEs (`tools/llm_text.py`), as `tools/bench_llm.py` does
with one `graphprune prune` process per method (same calls, same data, same numbers;
this one does not measure time or memory per method, and skips the repeated calibration).

    python tools/llm_ablation.py                       # every variant at 20%
    python tools/llm_ablation.py --ratios 0.1 0.3 --variants flap-lsq wanda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools")]

from bench_llm import tokens  # noqa: E402
from llm_real import cache_dir, export  # noqa: E402
from llm_text import perplexity  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.api import compensate_layerwise  # noqa: E402
from graphprune.planning.budget import Budget  # noqa: E402
from graphprune.posttrain.data import CalibrationData  # noqa: E402

# name -> (plan options, compensation: none, bias, lsq or "layerwise" lsq)
VARIANTS: dict[str, tuple[dict, str]] = {
    "magnitude": ({"criterion": "l2"}, "none"),
    "wanda": ({"criterion": "wanda"}, "none"),
    "wanda-bias": ({"criterion": "wanda"}, "bias"),
    "wanda-std-bias": ({"criterion": "wanda", "normalization": "standard"}, "bias"),
    "wanda-lsq": ({"criterion": "wanda"}, "lsq"),
    "wanda-seq": ({"criterion": "wanda"}, "layerwise"),
    "flap-none": ({"criterion": "flap"}, "none"),
    "flap": ({"criterion": "flap"}, "bias"),
    "flap-mean-bias": ({"criterion": "flap", "normalization": "mean"}, "bias"),
    "flap-lsq": ({"criterion": "flap"}, "lsq"),
    "flap-seq": ({"criterion": "flap"}, "layerwise"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="cache folder (default: $GRAPHPRUNE_LLM_CACHE)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--damp", type=float, default=0.01, help="least-squares damping")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    cache = cache_dir(args.cache)
    model = gp.load(str(export(cache)))
    calib = CalibrationData(path=str(tokens(cache, "docstrings", args.calib_count, 256)))
    ids = np.load(tokens(cache, "readmes", 32, 256))["input_ids"]
    analysis = gp.analyze(model)
    stats = gp.calibrate(analysis, calib, batch=4, scatter=True)

    def held_out(pruned) -> float:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(
            pruned.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return perplexity(session, ids)

    dense = held_out(model)
    print(json.dumps({"dense_perplexity": round(dense, 3)}), flush=True)
    for ratio in args.ratios:
        for name in args.variants:
            started = time.perf_counter()
            options, repair = VARIANTS[name]
            budget = Budget("params", 1 - ratio)
            chosen = gp.plan(
                analysis, gp.PlanOptions(budget=budget, only=("heads", "mlp"), **options),
                stats=stats,
            )  # fmt: skip
            if repair == "layerwise":
                pruned = compensate_layerwise(
                    analysis, chosen, calib, method="lsq", damp=args.damp, batch=4
                ).model
            elif repair != "none":
                pruned = gp.compensate(analysis, chosen, stats, method=repair, damp=args.damp)
            else:
                pruned = gp.prune(analysis, chosen)
            removed = {"heads": 0, "mlp": 0}
            for choice in chosen.choices:
                removed[analysis.groups[choice.group].kind] += len(choice.removed)
            ppl = held_out(pruned)
            row = {
                "variant": name, "ratio": ratio, "perplexity": round(ppl, 3),
                "vs_dense": round(ppl / dense, 3), "kv_heads_removed": removed["heads"],
                "mlp_removed": removed["mlp"], "seconds": round(time.perf_counter() - started),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
