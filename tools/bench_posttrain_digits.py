"""Post-training pruning of a small CNN on scikit-learn's digits, without fine-tuning.

Trains a 3-conv + 2-fc CNN on the 8x8 digits bundled with scikit-learn (offline,
deterministic, CPU, seconds), exports it with torch.onnx.export, and prunes it to 50% of
its MACs (`--target-macs 0.5`, global ranking) with every criterion and every
compensation; reports test accuracy for each. Calibration: 512 training images as one
NPZ (`--calib`). Where `torch_pruning` is importable (run with /root/tp-venv/bin/python),
Torch-Pruning's MagnitudePruner (group L2, uniform per layer as its default, and global)
prunes the same torch model to the same MACs (ratio found by bisection, MACs counted by
graphprune on the ONNX export of its result), also without fine-tuning.

Run: python tools/bench_posttrain_digits.py [--damps 0.01 auto]   (or /root/tp-venv/bin/python
... for TP). With several --damps, one lsq row per damping.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import graphprune as gp
from graphprune.core.metrics import count_macs
from graphprune.posttrain.damping import FOLDS
from graphprune.runtime.sessions import run, session

SHAPES = {"image": (1, 1, 8, 8)}


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)


def train(x, y, epochs: int = 40) -> DigitsCNN:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(xs), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[index]), ys[index]).backward()
            optimizer.step()
    return model.eval()


def export(model: nn.Module, path: Path) -> None:
    with torch.no_grad():
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip


def accuracy(model, x, y) -> float:
    logits = run(session(model, "CPUExecutionProvider"), {"image": x})[0]
    return float((logits.argmax(1) == y).mean())


def torch_pruning_rows(model: nn.Module, x, y, macs_dense: int, folder: Path) -> list[tuple]:
    try:
        import torch_pruning as tp
    except ImportError:
        return []
    rows = []
    for global_pruning in (False, True):
        pruned, kept = tp_bisect(tp, model, global_pruning, macs_dense, 0.5, folder)
        export(pruned, folder / "tp.onnx")
        name = "TP magnitude L2, " + ("global" if global_pruning else "uniform")
        rows.append((name, "none", kept, accuracy(gp.load(folder / "tp.onnx"), x, y)))
    return rows


def tp_bisect(tp, model: nn.Module, global_pruning: bool, macs_dense: int, target: float,
              folder: Path) -> tuple[nn.Module, float]:  # fmt: skip
    """Torch-Pruning's magnitude pruner at the largest ratio (14 bisection steps) whose
    export keeps at most `target` of the dense MACs: the pruned module and the kept share."""
    low, high, best = 0.0, 0.95, None
    for _ in range(14):
        ratio = (low + high) / 2
        pruned = _tp_prune(tp, model, ratio, global_pruning)
        export(pruned, folder / "tp.onnx")
        kept = count_macs(gp.load(folder / "tp.onnx"), SHAPES) / macs_dense
        if kept <= target:
            high, best = ratio, (pruned, kept)
        else:
            low = ratio
    return best


def _tp_prune(tp, model: nn.Module, ratio: float, global_pruning: bool) -> nn.Module:
    copy = DigitsCNN()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    pruner = tp.pruner.MagnitudePruner(
        copy, torch.zeros(1, 1, 8, 8), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[copy.classifier[-1]], global_pruning=global_pruning,
    )  # fmt: skip
    pruner.step()
    return copy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument(
        "--damps", nargs="+", type=lambda t: t if t == "auto" else float(t), default=[0.01],
        help="lsq dampings, or auto (held-out folds of the calibration images): a row each",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    x_train, x_test, y_train, y_test = data()
    torch_model = train(x_train, y_train)
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export(torch_model, folder / "digits.onnx")
        model = gp.load(folder / "digits.onnx")
        np.savez(folder / "calib.npz", image=x_train[: args.calib_samples])
        macs_dense = count_macs(model, SHAPES)
        print(f"digits CNN: {len(x_train)} train / {len(x_test)} test images, trained in "
              f"{train_s:.1f} s; {macs_dense:,} MACs; dense test accuracy "
              f"{accuracy(model, x_test, y_test):.4f}")  # fmt: skip
        analysis = gp.analyze(model)
        data_source = gp.CalibrationData(path=str(folder / "calib.npz"))
        folds = FOLDS if "auto" in args.damps else 0
        stats = gp.calibrate(analysis, data_source, batch=128, scatter=True, folds=folds)
        budget = gp.Budget("macs", args.target_macs, SHAPES)
        rows = []
        variants = [("none", 0.0), ("bias", 0.0), *(("lsq", d) for d in args.damps)]
        for criterion in ("random", "l1", "l2", "activation", "wanda", "flap", "obs"):
            options = gp.PlanOptions(criterion=criterion, budget=budget)
            plan = gp.plan(analysis, options, stats=stats)
            for method, damp in variants:
                pruned = gp.compensate(analysis, plan, stats, method=method, damp=damp)
                kept = count_macs(pruned, SHAPES) / macs_dense
                score = accuracy(pruned, x_test, y_test)
                label = method if method != "lsq" or len(args.damps) == 1 else f"lsq {damp}"
                rows.append((f"graphprune {criterion}", label, kept, score))
        rows += torch_pruning_rows(torch_model, x_test, y_test, macs_dense, folder)
    print(f"\ntarget: keep {args.target_macs:.0%} of MACs; {args.calib_samples} calibration "
          f"images; lsq damp {' '.join(map(str, args.damps))}")  # fmt: skip
    print(f"{'method':<34} {'compensate':<10} {'MACs kept':>9} {'test acc':>8}")
    for name, method, kept, acc in rows:
        print(f"{name:<34} {method:<10} {kept:>9.3f} {acc:>8.4f}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
