"""`graphprune finetune PRUNED -o OUT --teacher ORIGINAL --data DATA`: recover what pruning
cost by distilling the pruned model towards the original on the user's unlabelled inputs
(`graphprune.recovery`). The written model is the pruned graph with trained weights."""

from __future__ import annotations

import argparse
import json
import sys

import onnx

from ..errors import GraphpruneError, first_line
from ..io.loading import load_model
from ..io.saving import save_model, write_text_atomically
from ..recovery import require_torch
from ..recovery.data import TrainingData
from ..recovery.options import DEVICES, LOSSES, SCHEDULES, TRAINABLE, FinetuneOptions
from ..runtime.probe import choose_inputs
from .common import check_outputs, parse_shapes, write_all


def add_parser(commands) -> None:
    p = commands.add_parser(
        "finetune", help="recover accuracy: distil a pruned model towards the original"
    )
    p.add_argument("model", help="the pruned model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--teacher", required=True, help="the model it was pruned from")
    data = p.add_argument_group("data (the calibration format)")
    data.add_argument("--data", metavar="NPZ_OR_DIR", help="NPZ keyed by input name, samples "
                      "on axis 0, or a folder of them (unlabelled)")  # fmt: skip
    data.add_argument("--data-random", type=int, metavar="N", help="N seeded random samples")
    data.add_argument("--input-shape", nargs="+", default=[], metavar="NAME=D,D,...",
                      help="shapes of the random samples (batch dim included)")  # fmt: skip
    data.add_argument("--labels", metavar="KEY", help="array of integer labels in the NPZ: "
                      "adds a cross-entropy on the first output")  # fmt: skip
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, help="optimizer steps (default: one epoch)")
    train.add_argument("--epochs", type=float, help="passes over the data instead of --steps")
    train.add_argument("--batch", type=int, default=32, help="samples per step")
    train.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    train.add_argument("--warmup", type=float, default=0.05, help="fraction of linear warmup")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--loss", choices=LOSSES, default="mse",
                       help="on the outputs: normalized MSE, KL of softmaxes (logits), cosine")
    train.add_argument("--temperature", type=float, default=1.0, help="for --loss kl")
    train.add_argument("--no-features", dest="features", action="store_false",
                       help="distil the outputs only, not the corresponding inner tensors")
    train.add_argument("--feature-weight", type=float, default=1.0)
    train.add_argument("--label-weight", type=float, default=1.0)
    train.add_argument("--train", dest="trainable", choices=TRAINABLE, default="weights",
                       help="which weights train: all but embedding tables (default), all, "
                       "or norm-bias (1-D weights only)")  # fmt: skip
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    train.add_argument("--device", choices=DEVICES, default="auto")
    state = p.add_argument_group("files")
    state.add_argument("--checkpoint-dir", metavar="DIR", help="write checkpoints here")
    state.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS")
    state.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    state.add_argument("--cache-dir", metavar="DIR", help="keep the teacher's outputs here "
                       "(reused by a later run); default: a temporary folder, removed")  # fmt: skip
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(
        steps=args.steps, epochs=args.epochs, batch=args.batch, lr=args.lr,
        schedule=args.schedule, warmup=args.warmup, weight_decay=args.weight_decay,
        loss=args.loss, temperature=args.temperature, features=args.features,
        feature_weight=args.feature_weight, label_weight=args.label_weight,
        trainable=args.trainable, seed=args.seed, threads=args.threads, device=args.device,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        resume=args.resume, cache_dir=args.cache_dir,
        progress=not args.quiet and sys.stderr.isatty(),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    if (args.data is None) == (args.data_random is None):
        raise GraphpruneError("give --data NPZ_OR_DIR or --data-random N")
    check_outputs({"-o": args.output, "--report": args.report},
                  [args.model, args.teacher], {"--data": args.data})  # fmt: skip
    require_torch()
    student, teacher = read_model(args.model), read_model(args.teacher)
    shapes = None
    if args.data_random is not None:
        given = parse_shapes(args.input_shape)
        probed = choose_inputs(load_model(teacher), given, args.seed)
        shapes = {name: tuple(shape[1:]) for name, shape in probed.shapes.items()}
    data = TrainingData(path=args.data, random=args.data_random, shapes=shapes,
                        labels=args.labels, seed=args.seed)  # fmt: skip
    from ..recovery.distill import finetune  # torch is imported here, not before

    result = finetune(student, teacher, data, options)
    report = {"model": args.model, "teacher": args.teacher, "output": args.output,
              **result.report}  # fmt: skip
    text = json.dumps(report, indent=2) + "\n"
    writes = [
        (args.output, lambda: save_model(result.model, args.output, progress=options.progress)),
        (args.report, lambda: write_text_atomically(args.report, text)),
    ]
    write_all([(path, write) for path, write in writes if path])
    _print_summary(report)
    return 0


def read_model(path: str) -> onnx.ModelProto:
    """The model exactly as stored (its weights read), once graphprune's checks pass: the
    written model keeps this graph, so nothing here renames or folds it."""
    load_model(path)  # the checks of every command: one-line errors for bad files
    try:
        return onnx.load(path)
    except Exception as error:  # the checks passed: what is left is unreadable weights
        raise GraphpruneError(f"cannot read {path}: {first_line(error)}") from None


def _print_summary(report: dict) -> None:
    before, after = report["loss_before"]["total"], report["loss_after"]["total"]
    rate = report["steps_per_s"]
    print(
        f"finetuned {report['trained_tensors']} weights ({report['trained_values']:,} values) "
        f"for {report['steps']} steps of {report['batch']} on {report['device']} -> "
        f"{report['output']}"
    )
    print(
        f"distillation loss {before:.4g} -> {after:.4g}; max relative deviation from the "
        f"teacher {report['deviation_before']:.3g} -> {report['deviation_after']:.3g}"
    )
    print(
        f"teacher {report['teacher_s']:.1f} s, training {report['train_s']:.1f} s"
        + (f" ({rate:.2f} steps/s)" if rate else "")
        + f", peak memory {report['peak_memory_mb']:.0f} MB"
        + (f", {len(report['features'])} inner tensors matched" if report["features"] else "")
    )
    if "note" in report:
        print(f"note: {report['note']}")
