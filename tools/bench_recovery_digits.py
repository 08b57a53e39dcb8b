"""Recovery after pruning on scikit-learn's digits: graphprune (prune + `finetune`) against
Torch-Pruning + the same fine-tuning budget, on the same torch model.

The 3-conv + 2-fc CNN of `bench_posttrain_digits.py` is trained (dense test accuracy
0.986) and exported. graphprune prunes the ONNX file to `--target-macs` of its MACs
(global L2 ranking, least-squares compensation from 512 training images) and recovers with
`graphprune.recovery.finetune`: knowledge distillation towards the dense ONNX model (KL of
softmaxes at temperature `--temperature`) plus cross-entropy on the labels, on the 1,078
training images. Torch-Pruning's MagnitudePruner (group L2; uniform per layer, and global)
prunes the torch module to the same MACs (ratio found by bisection; MACs counted by
graphprune on the ONNX export) and is fine-tuned in torch with the same budget: the same
epochs, batch, AdamW learning rate, warmup + cosine schedule, loss (the same KL on the same
dense teacher + cross-entropy) and thread count. Accuracy is measured in onnxruntime on the
719 test images for both.

Torch-Pruning is not a graphprune dependency: run the peer's rows from a venv that has it::

    python -m venv --system-site-packages /tmp/tp-venv
    /tmp/tp-venv/bin/pip install torch-pruning==1.6.1 --no-deps
    /tmp/tp-venv/bin/python tools/bench_recovery_digits.py
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_posttrain_digits import accuracy, data, export, tp_bisect, train  # noqa: E402
from torch import nn  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.core.metrics import count_macs  # noqa: E402
from graphprune.recovery.data import TrainingData  # noqa: E402
from graphprune.recovery.distill import finetune  # noqa: E402
from graphprune.recovery.losses import learning_rate  # noqa: E402
from graphprune.recovery.options import FinetuneOptions  # noqa: E402

SHAPES = {"image": (1, 1, 8, 8)}


def recover_options(args) -> FinetuneOptions:
    return FinetuneOptions(
        epochs=args.epochs, batch=args.batch, lr=args.lr, loss="kl",
        temperature=args.temperature, label_weight=1.0, threads=args.threads, seed=0,
    )  # fmt: skip


def graphprune_rows(folder: Path, dense, x_train, y_train, x_test, y_test, args) -> list:
    analysis = gp.analyze(dense)
    np.savez(folder / "calib.npz", image=x_train[:512])
    stats = gp.calibrate(analysis, gp.CalibrationData(path=str(folder / "calib.npz")),
                         batch=128, scatter=True)  # fmt: skip
    budget = gp.Budget("macs", args.target_macs, SHAPES)
    np.savez(folder / "train.npz", image=x_train, label=y_train)
    rows = []
    for criterion, method in (("l2", "lsq"), ("l2", "none")):
        plan = gp.plan(analysis, gp.PlanOptions(criterion=criterion, budget=budget,
                                                global_ranking=True), stats=stats)  # fmt: skip
        pruned = gp.compensate(analysis, plan, stats, method=method)
        kept = count_macs(pruned, SHAPES) / count_macs(dense, SHAPES)
        before = accuracy(pruned, x_test, y_test)
        started = time.perf_counter()
        result = finetune(pruned, dense, TrainingData(path=str(folder / "train.npz"),
                                                      labels="label"), recover_options(args))
        seconds = time.perf_counter() - started
        after = accuracy(result.model, x_test, y_test)
        rows.append((f"graphprune {criterion} global, {method}", kept, before, after, seconds,
                     result.report["steps"]))  # fmt: skip
    return rows


def torch_pruning_rows(folder: Path, model: nn.Module, macs_dense: int, x_train, y_train,
                       x_test, y_test, args) -> list:  # fmt: skip
    try:
        import torch_pruning as tp
    except ImportError:
        print("(Torch-Pruning not importable: its rows are left out; see the docstring)")
        return []
    rows = []
    for global_pruning in (False, True):
        pruned, kept = tp_bisect(tp, model, global_pruning, macs_dense, args.target_macs, folder)
        export(pruned, folder / "tp.onnx")
        before = accuracy(gp.load(folder / "tp.onnx"), x_test, y_test)
        started = time.perf_counter()
        steps = _torch_finetune(pruned, model, x_train, y_train, args)
        seconds = time.perf_counter() - started
        export(pruned.eval(), folder / "tp.onnx")
        after = accuracy(gp.load(folder / "tp.onnx"), x_test, y_test)
        name = "Torch-Pruning L2, " + ("global" if global_pruning else "uniform")
        rows.append((name, kept, before, after, seconds, steps))
    return rows


def _torch_finetune(student: nn.Module, teacher: nn.Module, x, y, args) -> int:
    """The budget graphprune's recovery gets: epochs, batch, AdamW, schedule, KL + CE."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    per_epoch = math.ceil(len(xs) / args.batch)
    total = math.ceil(args.epochs * per_epoch)
    t = args.temperature
    student.eval()  # no dropout or batch norm here: the same function as the ONNX graph
    with torch.no_grad():
        targets = teacher.eval()(xs)
    for step in range(total):
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([0, epoch]).permutation(len(xs))
        rows = torch.from_numpy(order[index * args.batch : (index + 1) * args.batch])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, args.lr, "cosine", 0.05)
        logits = student(xs[rows])
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, -1),
            nn.functional.log_softmax(targets[rows] / t, -1),
            log_target=True, reduction="batchmean",
        ) * t**2  # fmt: skip
        loss = kd + nn.functional.cross_entropy(logits, ys[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-macs", type=float, default=0.25)
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    x_train, x_test, y_train, y_test = data()
    torch_model = train(x_train, y_train)
    torch.use_deterministic_algorithms(False)  # train() turns it on; finetune sets its own
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export(torch_model, folder / "digits.onnx")
        dense = gp.load(folder / "digits.onnx")
        macs = count_macs(dense, SHAPES)
        print(f"digits CNN: {len(x_train)} train / {len(x_test)} test images, {macs:,} MACs, "
              f"dense test accuracy {accuracy(dense, x_test, y_test):.4f}")  # fmt: skip
        rows = graphprune_rows(folder, dense, x_train, y_train, x_test, y_test, args)
        rows += torch_pruning_rows(folder, torch_model, macs, x_train, y_train, x_test, y_test,
                                   args)  # fmt: skip
    print(f"\ntarget: keep {args.target_macs:.0%} of MACs; recovery: {args.epochs:g} epochs of "
          f"batch {args.batch}, AdamW lr {args.lr:g} (warmup 5% + cosine), KL(T="
          f"{args.temperature:g}) to the dense model + cross-entropy, {args.threads} thread(s)")
    print(f"{'method':<34} {'MACs kept':>9} {'pruned':>7} {'recovered':>9} {'steps':>6} "
          f"{'train s':>7}")  # fmt: skip
    for name, kept, before, after, seconds, steps in rows:
        print(f"{name:<34} {kept:>9.3f} {before:>7.4f} {after:>9.4f} {steps:>6} {seconds:>7.1f}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
