"""Latency-aware pruning against the uniform ratio, at the same measured latency.

For every model: profile it (`graphprune.runtime.profile`, the provider and threads
given), then

* prediction: for uniform ratios 0.25 and 0.5 (L2), the latency the table predicts for
  the plan against the latency measured (alternated with the original, medians);
* `--target-latency T` (default 0.5): the planned-and-measured loop of `graphprune prune`,
  its measured fraction of the original's latency, rounds, MACs kept and quality;
* the uniform ratio at the same measured latency: the per-group ratio found by bisection
  on the measured fraction (L2, the same criterion), its MACs and quality.

Quality: test accuracy for the digits CNN (scikit-learn's digits, trained here), the mean
embedding cosine to the dense model for the real all-MiniLM-L6-v2 (400 sentences), and
the mean cosine of the outputs to the original's on 8 seeded random inputs otherwise.
speedup/MAC = (original / pruned latency) / (MACs before / after): 1.0 means the
latency fell as much as the MACs did. Both prunes are timed in one final alternated run
with the original so they see the same machine state.

Command (re-run it on a quiet machine; timings on a shared one are noisy)::

    python tools/bench_latency_aware.py          # zoo subset, ResNet-50, digits, MiniLM
    python tools/bench_latency_aware.py --models resnet50 minilm --threads 2 --repeats 30
    python tools/bench_latency_aware.py --provider cuda          # on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchkit.models import feeds as random_feeds  # noqa: E402
from benchkit.models import zoo as zoo_model  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.core.metrics import count_macs  # noqa: E402
from graphprune.planning.latency import LatencyCostModel  # noqa: E402
from graphprune.planning.target import plan_to_latency  # noqa: E402
from graphprune.runtime.latency import bench  # noqa: E402
from graphprune.runtime.profile import ProfileOptions, check_provider, profile  # noqa: E402
from graphprune.runtime.sessions import run, session  # noqa: E402

ZOO_MODELS = ["resnet18", "resnet_bottleneck", "mobilenetv2", "regnet", "vgg"]
EXTRA = ["resnet50", "digits", "minilm"]


@dataclasses.dataclass
class Subject:
    """A model with its feeds for timing and a quality score for a pruned version."""

    name: str
    model: object
    feeds: dict
    quality: object  # pruned ModelProto -> float
    quality_name: str


def output_cosine(model, seeds: int = 8):
    feeds = [random_feeds(model, seed=seed) for seed in range(seeds)]
    sess = session(model, "CPUExecutionProvider")
    dense = [run(sess, f)[0].ravel() for f in feeds]

    def score(pruned) -> float:
        s = session(pruned, "CPUExecutionProvider")
        values = []
        for f, d in zip(feeds, dense, strict=True):
            out = run(s, f)[0].ravel()
            values.append(float(out @ d / (np.linalg.norm(out) * np.linalg.norm(d) + 1e-12)))
        return float(np.mean(values))

    return score


def zoo_subject(name: str) -> Subject:
    model = gp.load(zoo_model(name, "classic"))
    return Subject(name, model, random_feeds(model), output_cosine(model), "output cosine")


def resnet50_subject(folder: Path) -> Subject:
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    path = folder / "resnet50.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(1, 3, 224, 224),), str(path), input_names=["input"],
            output_names=["logits"], opset_version=17, dynamo=False,
        )  # fmt: skip
    model = gp.load(path)
    return Subject("resnet50", model, random_feeds(model), output_cosine(model), "output cosine")


def digits_subject(folder: Path) -> Subject:
    import bench_posttrain_digits as digits

    x_train, x_test, y_train, y_test = digits.data()
    digits.export(digits.train(x_train, y_train), folder / "digits.onnx")
    model = gp.load(folder / "digits.onnx")
    return Subject(
        "digits", model, {"image": x_test},  # the whole test set: at batch 1 it is all overhead
        lambda pruned: digits.accuracy(pruned, x_test, y_test), "test accuracy",
    )  # fmt: skip


def minilm_subject(folder: Path) -> Subject:
    import bench_posttrain_minilm as minilm

    tokenizer = minilm.export(folder / "minilm.onnx")
    model = gp.load(folder / "minilm.onnx")
    texts = minilm.sentences(2, 400)
    feeds_list = minilm.batched_feeds(tokenizer, texts)
    dense = minilm.embed(model, feeds_list)
    one = tokenizer([texts[0]], padding="max_length", max_length=128, return_tensors="np")
    feeds = {k: one[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    def cosine(pruned) -> float:
        return float((minilm.embed(pruned, feeds_list) * dense).sum(1).mean())

    return Subject("minilm", model, feeds, cosine, "embedding cosine")


def uniform_at(analysis, subject, fraction, options, criterion) -> tuple:
    """The uniform per-group ratio whose measured latency fraction is closest to
    `fraction` (bisection on the ratio, 6 steps), its plan and model."""
    low, high, best = 0.0, 0.95, None
    for _ in range(6):
        ratio = (low + high) / 2
        plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion=criterion))
        pruned = gp.prune(analysis, plan)
        timing = bench(subject.model, pruned, subject.feeds, options.repeats,
                       options.provider, options.resolved_threads)  # fmt: skip
        measured = timing["paired_fraction"]
        if best is None or abs(measured - fraction) < abs(best[1] - fraction):
            best = (ratio, measured, plan, pruned)
        if measured > fraction:
            low = ratio
        else:
            high = ratio
    return best


def evaluate(subject: Subject, args) -> dict:
    options = ProfileOptions(
        provider=check_provider(args.provider), threads=args.threads, repeats=args.repeats
    )
    analysis = gp.analyze(subject.model)
    shapes = {k: tuple(v.shape) for k, v in subject.feeds.items()}
    started = time.perf_counter()
    table = profile(analysis, shapes, subject.feeds, options)
    profile_s = time.perf_counter() - started
    cost = LatencyCostModel(analysis, table)
    threads = options.resolved_threads
    predictions = []
    for ratio in (0.25, 0.5):
        plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion=args.criterion))
        pruned = gp.prune(analysis, plan)
        timing = bench(subject.model, pruned, subject.feeds, args.repeats, table.provider, threads)
        predicted = cost.cost(plan.keep_atom(analysis)) / cost.total
        measured = timing["paired_fraction"]
        predictions.append((ratio, predicted, measured))
    budget = gp.Budget("latency", args.target, shapes=shapes, table=table)
    aware = plan_to_latency(
        analysis, gp.PlanOptions(criterion=args.criterion, budget=budget),
        lambda p: gp.prune(analysis, p), subject.feeds, table=table, target=args.target,
        repeats=args.repeats,
    )  # fmt: skip
    ratio, _, _, uniform = uniform_at(
        analysis, subject, aware.summary["measured_fraction"], options, args.criterion
    )
    final = {}
    for label, pruned in (("aware", aware.model), ("uniform", uniform)):
        timing = bench(subject.model, pruned, subject.feeds, 2 * args.repeats, table.provider,
                       threads)  # fmt: skip
        macs = count_macs(subject.model, shapes) / max(count_macs(pruned, shapes), 1)
        speedup = 1 / timing["paired_fraction"]
        final[label] = {
            "fraction": timing["paired_fraction"],
            "mac_ratio": macs, "speedup_per_mac": speedup / macs,
            "quality": subject.quality(pruned),
        }  # fmt: skip
    return {
        "profile_s": profile_s, "layers": len(table.layers), "predictions": predictions,
        "aware": aware.summary, "uniform_ratio": ratio, "final": final,
        "dense_quality": subject.quality(subject.model),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*ZOO_MODELS, *EXTRA])
    parser.add_argument("--target", type=float, default=0.5, help="--target-latency")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--provider", default="cpu", help="cpu, cuda or tensorrt")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--criterion", default="l2")
    args = parser.parse_args(argv)
    print("command: python tools/bench_latency_aware.py " + " ".join(sys.argv[1:]))
    print(f"{args.provider}, {args.threads} threads, target {args.target}, "
          f"criterion {args.criterion}, medians of {args.repeats} alternated runs")  # fmt: skip
    started = time.perf_counter()
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            builders = {"resnet50": resnet50_subject, "digits": digits_subject,
                        "minilm": minilm_subject}  # fmt: skip
            try:
                subject = builders[name](Path(tmp)) if name in builders else zoo_subject(name)
                result = evaluate(subject, args)
            except Exception as error:  # report and go on with the other models
                print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
                continue
            aware, final = result["aware"], result["final"]
            predicted = " ".join(f"r{r}: {p:.2f}/{m:.2f}" for r, p, m in result["predictions"])
            print(f"\n{name}: {result['layers']} layers profiled in {result['profile_s']:.0f} s; "
                  f"predicted/measured fraction at uniform {predicted}")  # fmt: skip
            print(f"  target {args.target}: measured {aware['measured_fraction']:.3f} in "
                  f"{len(aware['attempts'])} rounds (within ±{aware['tolerance']:.0%}: "
                  f"{aware['within_tolerance']})")  # fmt: skip
            print(f"  {'':<22} {'latency':>8} {'MACx':>6} {'spd/MAC':>8} "
                  f"{subject.quality_name:>18}  (dense {result['dense_quality']:.4f})")  # fmt: skip
            for label in ("aware", "uniform"):
                row = final[label]
                title = ("latency-aware" if label == "aware"
                         else f"uniform ratio {result['uniform_ratio']:.3f}")  # fmt: skip
                numbers = (f"{row['fraction']:>8.3f} {row['mac_ratio']:>6.2f} "
                           f"{row['speedup_per_mac']:>8.2f} {row['quality']:>18.4f}")  # fmt: skip
                print(f"  {title:<22} {numbers}", flush=True)
            summary.append(result)
    for label in ("aware", "uniform"):
        values = [r["final"][label]["speedup_per_mac"] for r in summary]
        if values:
            print(f"median speedup/MAC ratio, {label}: {np.median(values):.2f}")
    within = [r["aware"]["within_tolerance"] for r in summary]
    print(f"within ±5% of the target: {sum(within)}/{len(within)}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
