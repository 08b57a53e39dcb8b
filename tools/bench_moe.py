"""Expert pruning of a Qwen-MoE-style export without fine-tuning: calibrated (EASY-EP:
routing frequency x gate x output norm) vs magnitude (norm of the expert's weights) vs
random expert removal.

The model is transformers' Qwen2-MoE (or Qwen3-MoE, Mixtral) language model built from a
small config with seeded random weights (`models/moe_zoo.py`, batched experts, exported
by the dynamo exporter), so the numbers compare criteria, not a trained model's quality.
Every MoE layer drops the same fraction of its experts (`--only experts --ratio`); the
dense model's last hidden states on held-out token sequences are the reference: mean
cosine similarity per token, and the fraction of tokens whose arg-max hidden unit agrees.
Calibration and evaluation sequences are different random token ids.

Run: python tools/bench_moe.py [--model qwen2_moe] [--ratio 0.25] [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune as gp
from graphprune.runtime.sessions import run, session
from models.moe_zoo import MOE, VOCAB, cached


def sequences(count: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (count, length)).astype(np.int64)


def hidden_states(model, ids: np.ndarray) -> np.ndarray:
    """Per-sequence runs (the dynamo export fixes the batch at 1): [tokens, hidden]."""
    sess = session(model, "CPUExecutionProvider")
    name = sess.get_inputs()[0].name
    return np.concatenate([run(sess, {name: row[None]})[0][0] for row in ids])


def compare(reference: np.ndarray, pruned: np.ndarray) -> tuple[float, float]:
    cosine = np.sum(reference * pruned, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(pruned, axis=1)
    )
    agree = np.mean(reference.argmax(axis=1) == pruned.argmax(axis=1))
    return float(cosine.mean()), float(agree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="qwen2_moe", choices=[n for n in MOE if not MOE[n].block]
    )
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, default=5, help="random-removal seeds")
    parser.add_argument("--calib", type=int, default=128, help="calibration sequences")
    parser.add_argument("--eval", type=int, default=64, help="evaluation sequences")
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args(argv)

    model = gp.load(cached(args.model, "dynamo"))
    analysis = gp.analyze(model)
    experts = [g for g in analysis.groups if g.kind == "experts"]
    print(f"{args.model}: {len(experts)} MoE layers x {experts[0].channels} experts, "
          f"removing {args.ratio:.0%} of each")  # fmt: skip
    evaluation = sequences(args.eval, args.length, seed=2)
    reference = hidden_states(model, evaluation)
    with tempfile.TemporaryDirectory() as folder:
        calib = Path(folder) / "calib.npz"
        np.savez(calib, input=sequences(args.calib, args.length, seed=1))
        start = time.perf_counter()
        stats = gp.calibrate(analysis, gp.CalibrationData(path=str(calib)))
        calibrate_s = time.perf_counter() - start
    rows = []
    runs = [("easy-ep (activation)", "activation", 0), ("magnitude (l2)", "l2", 0)]
    runs += [(f"random seed {s}", "random", s) for s in range(args.seeds)]
    for label, criterion, seed in runs:
        options = gp.PlanOptions(
            ratio=args.ratio, only=("experts",), criterion=criterion, seed=seed
        )
        plan = gp.plan(analysis, options, stats=stats if criterion == "activation" else None)
        removed = [len(c.removed) for c in plan.choices]
        cosine, agree = compare(reference, hidden_states(gp.prune(analysis, plan), evaluation))
        rows.append((label, cosine, agree, removed))
    print(f"calibration: {args.calib} sequences x {args.length} tokens, {calibrate_s:.1f} s")
    print(f"{'criterion':<22} {'cosine':>8} {'argmax agree':>13}  removed per layer")
    for label, cosine, agree, removed in rows:
        print(f"{label:<22} {cosine:8.4f} {agree:13.3f}  {removed}")
    randoms = [r[1] for r in rows if r[0].startswith("random")]
    if randoms:
        print(f"{'random mean (min-max)':<22} {np.mean(randoms):8.4f}  "
              f"({min(randoms):.4f}-{max(randoms):.4f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
