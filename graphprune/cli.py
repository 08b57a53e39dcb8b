"""The `graphprune` command line: analyze, prune, diff, --version.

Every expected failure prints one line `graphprune: error: ...` and exits 1 (usage errors
exit 2); the input model is never written; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__, _check, analyze, load, posttrain, prune, save
from .diff import diff_models, structural_changes
from .diff_text import diff_text
from .errors import GraphpruneError
from .html_report import analysis_html, diff_html
from .importance import CRITERIA, NORMALIZATIONS, REDUCTIONS
from .metrics import count_macs, count_params
from .planning import KINDS, make_plan, plan_from_json
from .report import analysis_json, analysis_text, groups_json, params_removed_by_kind
from .saving import write_text_atomically
from .validation import bench, compare, input_shapes, load_inputs, random_inputs

APPROXIMATE_HELP = (
    "also prune channels normalized together by LayerNormalization (inexact: the kept "
    "channels' statistics change, as in Torch-Pruning)"
)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GraphpruneError as error:
        print(f"graphprune: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphprune", description="Structural channel pruning for ONNX models."
    )
    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    a = commands.add_parser("analyze", help="list the groups of coupled channels")
    a.add_argument("model")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--approximate-norms", action="store_true", help=APPROXIMATE_HELP)
    a.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    a.set_defaults(run=_analyze)

    d = commands.add_parser("diff", help="compare two models layer by layer")
    d.add_argument("before", metavar="A")
    d.add_argument("after", metavar="B")
    d.add_argument("--json", metavar="OUT.json", help="write the diff as JSON ('-': stdout)")
    d.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    d.add_argument("--all", action="store_true", help="list unchanged layers too")
    d.add_argument("--inputs", help="NPZ of inputs: run both models and show deviations")
    d.add_argument("--validate", action="store_true", help="run both on seeded random inputs")
    d.add_argument("--input-shape", nargs="+", default=[], metavar="NAME=D,D,...")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--exit-code", action="store_true", help="exit 3 when the structures differ")
    d.set_defaults(run=_diff)

    p = commands.add_parser("prune", help="remove channels and validate the result")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove")
    p.add_argument("--criterion", choices=CRITERIA, default="l2")
    p.add_argument("--reduction", choices=REDUCTIONS, default="mean")
    p.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default=None,
        help="per-group score normalization (default: standard for flap, mean otherwise)",
    )
    p.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        help="rank channels of all groups together",
    )
    p.add_argument(
        "--max-group-ratio",
        type=float,
        default=0.9,
        help="with --global: most a single group may lose",
    )
    p.add_argument("--round-to", type=int, default=1, help="kept channels per group: multiple of N")
    p.add_argument("--min-keep", type=int, default=1, help="channels every group keeps")
    p.add_argument(
        "--only",
        action="append",
        choices=KINDS,
        default=[],
        help="prune only groups of this kind (repeatable)",
    )
    p.add_argument(
        "--head-ratio",
        type=float,
        default=None,
        help="ratio for attention-head groups (default: --ratio)",
    )
    p.add_argument(
        "--prune-outputs",
        action="store_true",
        help="let model outputs lose channels too (their shapes change)",
    )
    p.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="NAME",
        help="node or initializer names (glob patterns) to leave untouched",
    )
    p.add_argument("--approximate-norms", action="store_true", help=APPROXIMATE_HELP)
    p.add_argument("--plan", help="re-apply the exact channels of an earlier report")
    p.add_argument("--inputs", help="NPZ of inputs for validation, keyed by input name")
    p.add_argument(
        "--input-shape",
        nargs="+",
        default=[],
        metavar="NAME=D,D,...",
        help="shapes for random validation inputs (symbolic dims)",
    )
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--html", metavar="REPORT.html", help="write an HTML diff of the pruned pair")
    p.add_argument("--bench", action="store_true", help="time both models in onnxruntime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    posttrain.add_arguments(p)
    p.set_defaults(run=_prune)
    return parser


def _analyze(args) -> int:
    model = load(args.model)
    analysis = analyze(model, approximate_norms=args.approximate_norms)
    print(json.dumps(analysis_json(analysis), indent=2) if args.json else analysis_text(analysis))
    if args.html:
        write_text_atomically(args.html, analysis_html(analysis, str(args.model)))
    return 0


def _diff(args) -> int:
    shapes = _parse_shapes(args.input_shape)
    feeds = None
    if args.inputs:
        feeds = load_inputs(args.inputs)
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    elif args.validate:
        model = load(args.before)
        feeds = random_inputs(model, input_shapes(model, shapes), args.seed)
    result = diff_models(args.before, args.after, input_shapes=shapes or None, feeds=feeds)
    if args.json == "-":
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(diff_text(result, all_layers=args.all))
    if args.json and args.json != "-":
        write_text_atomically(args.json, json.dumps(result, indent=2, sort_keys=True) + "\n")
    if args.html:
        write_text_atomically(args.html, diff_html(result))
    return 3 if args.exit_code and structural_changes(result) else 0


def _prune(args) -> int:
    if args.ratio is None and args.plan is None and not (args.target_macs or args.target_params):
        raise GraphpruneError("give --ratio R, --target-macs F, --target-params F or --plan")
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise GraphpruneError("the output path is the input model; choose another")
    timings = {}
    started = time.perf_counter()
    model = load(args.model)
    shapes = input_shapes(model, _parse_shapes(args.input_shape))
    feeds = load_inputs(args.inputs) if args.inputs else random_inputs(model, shapes, args.seed)
    if args.inputs:
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    timings["load_s"] = time.perf_counter() - started

    earlier = _read_json(args.plan) if args.plan else {}
    earlier = earlier.get("plan", earlier)
    recorded = earlier.get("options", {})
    # A transformer's hidden size only goes with its normalizations (approximate).
    approximate = args.approximate_norms or "hidden" in args.only
    approximate = approximate or recorded.get("approximate_norms", False)
    prune_outputs = args.prune_outputs or recorded.get("prune_outputs", False)
    started = time.perf_counter()
    analysis = analyze(
        model, not args.quiet, approximate_norms=approximate, prune_outputs=prune_outputs
    )
    timings["analyze_s"] = time.perf_counter() - started

    budget = posttrain.budget_from_args(args, shapes)
    started = time.perf_counter()
    stats = posttrain.statistics(args, model, analysis, shapes)
    timings["calibrate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    if args.plan:
        plan = plan_from_json(analysis, earlier)
    else:
        plan = make_plan(
            analysis, args.ratio or 0.0, stats=stats, budget=budget,
            criterion=args.criterion, global_ranking=args.global_ranking,
            round_to=args.round_to, min_keep=args.min_keep,
            max_group_ratio=args.max_group_ratio, ignore=args.ignore,
            reduction=args.reduction, normalization=args.normalization, seed=args.seed,
            only=args.only,
            kind_ratios={} if args.head_ratio is None else {"heads": args.head_ratio},
        )  # fmt: skip
    timings["plan_s"] = time.perf_counter() - started

    started = time.perf_counter()
    compensated = posttrain.rewrite_compensated(args, analysis, plan, stats)
    pruned, compensation_notes = compensated or (prune(analysis, plan), [])
    if compensated:
        _check(pruned)
    timings["rewrite_s"] = time.perf_counter() - started

    started = time.perf_counter()
    validation = compare(model, pruned, feeds, shapes_may_change=analysis.prune_outputs)
    timings["validate_s"] = time.perf_counter() - started
    report = {
        "graphprune": __version__,
        "model": str(args.model),
        "output": str(args.output),
        "plan": plan.to_json(analysis),
        "params": _before_after(count_params(model), count_params(pruned)),
        "macs": _before_after(count_macs(model, shapes), count_macs(pruned, shapes)),
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        "validation": validation,
        "params_removed_by_kind": params_removed_by_kind(analysis, plan),
        "groups": groups_json(analysis, plan),
        "notes": plan.notes,
        **posttrain.report_section(args, stats, plan, compensation_notes),
    }
    if args.bench:
        report["bench"] = bench(model, pruned, feeds)
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    save(pruned, args.output)
    if args.report:
        write_text_atomically(args.report, json.dumps(report, indent=2) + "\n")
    if args.html:
        pair = diff_models(model, pruned, shapes, analysis=analysis,
                           labels=(str(args.model), str(args.output)))  # fmt: skip
        pair["validation"] = validation
        write_text_atomically(args.html, diff_html(pair))
    _print_summary(report)
    return 0


def _before_after(before: int, after: int) -> dict:
    return {
        "before": before,
        "after": after,
        "removed_fraction": round(1 - after / before, 6) if before else 0.0,
    }


def _print_summary(report: dict) -> None:
    params, macs = report["params"], report["macs"]
    deviations = [o["max_rel"] for o in report["validation"]["outputs"] if o["max_rel"] is not None]
    worst = max(deviations, default=0.0)
    pruned_groups = sum(1 for g in report["groups"] if g["removed"])
    print(f"pruned {pruned_groups} of {len(report['groups'])} groups -> {report['output']}")
    print(
        f"params {params['before']:,} -> {params['after']:,} "
        f"(-{params['removed_fraction']:.1%}), MACs {macs['before']:,} -> {macs['after']:,} "
        f"(-{macs['removed_fraction']:.1%})"
    )
    outputs = report["validation"]["outputs"]
    changed = [f"{o['name']} {o['shape_before']} -> {o['shape']}" for o in outputs
               if "shape_before" in o]  # fmt: skip
    shapes = f"pruned outputs {', '.join(changed)}" if changed else "output shapes unchanged"
    print(
        f"validated on {report['validation']['execution_provider']}: {shapes}, "
        f"max relative deviation {worst:.3g}"
    )
    if "bench" in report:
        b = report["bench"]
        print(
            f"latency {b['latency_ms_before']:.3f} ms -> {b['latency_ms_after']:.3f} ms "
            f"({b['speedup']:.2f}x)"
        )


def _parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise GraphpruneError(
                f"bad --input-shape {item!r} (expected NAME=1,3,224,224)"
            ) from None
    return shapes


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GraphpruneError(f"cannot read plan {path}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
