"""The command line's post-training options: calibration data, calibrated criteria,
closed-form compensation and MACs/params budgets (`graphprune prune --calib ...`).

Kept apart from `cli.py` so that the prune command only asks three questions: is there a
budget, are there statistics, and how is the plan rewritten.
"""

from __future__ import annotations

import argparse

import onnx

from .analysis import Analysis
from .budget import Budget
from .calibdata import CalibrationData, describe
from .calibration import CalibrationStats, collect, find_consumers
from .compensation import METHODS, prune_compensated
from .criteria import CALIBRATED
from .errors import GraphpruneError
from .planning import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    calib = parser.add_argument_group("post-training pruning (calibration data)")
    calib.add_argument(
        "--calib", metavar="NPZ_OR_DIR", help="NPZ keyed by input name, samples on axis 0"
    )
    calib.add_argument(
        "--calib-random", type=int, metavar="N", help="N seeded random samples (data-free)"
    )
    calib.add_argument("--calib-batch", type=int, default=32, help="samples per onnxruntime run")
    calib.add_argument(
        "--compensate",
        choices=METHODS,
        default="none",
        help="adjust the consumers of removed channels: bias (FLAP) or least squares (OBS)",
    )
    calib.add_argument(
        "--damp", type=float, default=0.01, help="least-squares damping, x mean(diag X^T X)"
    )
    calib.add_argument("--target-macs", type=float, metavar="F", help="fraction of MACs to keep")
    calib.add_argument(
        "--target-params", type=float, metavar="F", help="fraction of parameters to keep"
    )


def budget_from_args(args, shapes: dict[str, tuple[int, ...]]) -> Budget | None:
    if args.target_macs is not None and args.target_params is not None:
        raise GraphpruneError("give --target-macs or --target-params, not both")
    targets = {"macs": args.target_macs, "params": args.target_params}
    metric = next((name for name, value in targets.items() if value is not None), None)
    if metric is None:
        return None
    if args.ratio is not None:
        raise GraphpruneError(f"give --ratio or --target-{metric}, not both")
    return Budget(metric, targets[metric], shapes)


def statistics(
    args, model: onnx.ModelProto, analysis: Analysis, shapes: dict[str, tuple[int, ...]]
) -> CalibrationStats | None:
    """Calibration statistics when a calibrated criterion or compensation needs them."""
    needed = args.criterion in CALIBRATED or args.compensate != "none"
    given = args.calib is not None or args.calib_random is not None
    if args.calib is not None and args.calib_random is not None:
        raise GraphpruneError("give --calib or --calib-random, not both")
    if not needed:
        return None
    if not given:
        what = f"criterion {args.criterion!r}" if args.criterion in CALIBRATED else "--compensate"
        raise GraphpruneError(f"{what} needs calibration data (--calib FILE or --calib-random N)")
    data = CalibrationData(
        path=args.calib,
        random=args.calib_random,
        shapes={name: tuple(shape[1:]) for name, shape in shapes.items()},
        seed=args.seed,
    )
    return collect(
        analysis,
        data,
        find_consumers(analysis),
        batch=args.calib_batch,
        scatter=args.compensate == "lsq",
        progress=not args.quiet,
    )


def rewrite_compensated(
    args, analysis: Analysis, plan: Plan, stats: CalibrationStats | None
) -> tuple[onnx.ModelProto, list[str]] | None:
    """The compensated pruned model and its notes, None without compensation."""
    if args.compensate == "none" or stats is None:
        return None
    return prune_compensated(analysis, plan, stats, args.compensate, args.damp)


def report_section(args, stats: CalibrationStats | None, plan: Plan, notes: list[str]) -> dict:
    section: dict = {}
    if stats is not None:
        data = CalibrationData(path=args.calib, random=args.calib_random, seed=args.seed)
        section["calibration"] = {"data": describe(data), **stats.summary()}
        section["compensation"] = {"method": args.compensate, "damp": args.damp, "notes": notes}
    if plan.budget is not None:
        section["budget"] = plan.budget
    return section
