"""`graphprune prune MODEL -o OUT`: options in, `graphprune.pipeline.prune_model`, then
save the model, write the report and the HTML diff, and print a summary. When barriers
leave the prune with nothing (or less than half of what was asked), the summary names the
commonest barrier and the option that lifts it; `--strict` then fails on nothing pruned
(exit code `NOTHING_PRUNED`, nothing written), and on a latency target the loop ended
outside its tolerance (exit code `LATENCY_MISSED`, nothing written)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.blocks import UNITS
from ..core.channels import KINDS
from ..errors import GraphpruneError
from ..inspect.diff import diff_models
from ..inspect.html import diff_html
from ..io.genai import genai_config
from ..io.saving import save_model, write_text_atomically
from ..pipeline import (
    CALIB_MODES,
    CalibrationOptions,
    PruneOptions,
    PruneReport,
    PruneResult,
    prune_model,
)
from ..planning.budget import Budget
from ..planning.depth import BLOCK_CRITERIA
from ..planning.importance import CRITERIA, NORMALIZATIONS, REDUCTIONS
from ..planning.plan import PlanOptions
from ..posttrain.compensation import DEFAULT_DAMP, METHODS
from ..recovery.options import FinetuneOptions
from ..runtime.sessions import DEFAULT_RUN_TIMEOUT_S, limit_runs
from .common import (
    APPROXIMATE_DYNAMIC_QUANT_HELP,
    APPROXIMATE_HELP,
    RUN_TIMEOUT_HELP,
    check_number,
    check_outputs,
    parse_shapes,
    read_json,
    write_all,
)
from .profile import add_latency_options, latency_from

NOTHING_PRUNED = 4  # --strict and the prune removed nothing
LATENCY_MISSED = 5  # --strict and the latency loop ended outside its tolerance


def add_parser(commands) -> None:
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
        help="score normalization: mean/max/sum divide each group's scores, standard "
        "standardises each layer's channel scores (default: standard for flap, none for "
        "obs-greedy, mean otherwise)",
    )
    p.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        help="rank channels of all groups together",
    )
    p.add_argument(
        "--max-group-ratio", type=float, default=0.9,
        help="with --global: most a single group may lose",
    )  # fmt: skip
    p.add_argument("--round-to", type=int, default=1, help="kept channels per group: multiple of N")
    p.add_argument("--min-keep", type=int, default=1, help="channels every group keeps")
    p.add_argument(
        "--only", action="append", choices=KINDS, default=[],
        help="prune only groups of this kind (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--head-ratio", type=float, default=None,
        help="ratio for attention-head groups (default: --ratio)",
    )  # fmt: skip
    p.add_argument(
        "--expert-ratio", type=float, default=None,
        help="ratio for mixture-of-experts expert groups (default: --ratio)",
    )  # fmt: skip
    p.add_argument(
        "--drop-blocks", type=int, default=0, metavar="N",
        help="drop the N least important residual units (transformer layers, ResNet blocks)",
    )  # fmt: skip
    p.add_argument(
        "--block-criterion", choices=BLOCK_CRITERIA, default="influence",
        help="how units are ranked: Block Influence (needs calibration), magnitude, random",
    )  # fmt: skip
    p.add_argument(
        "--block-unit", choices=UNITS, default="layer",
        help="what --drop-blocks drops: a layer (its residual blocks together) or one branch",
    )  # fmt: skip
    p.add_argument(
        "--prune-outputs",
        action="store_true",
        help="let model outputs lose channels too (their shapes change)",
    )
    p.add_argument(
        "--prune-kv-cache",
        action="store_true",
        help="let a KV cache the caller feeds and reads (past_key_values.N.key/value in, "
        "present.N.key/value out) lose the heads the attention loses: the cache's head dim "
        "changes, the rest of the interface does not",
    )
    p.add_argument(
        "--genai-config", metavar="genai_config.json",
        help="onnxruntime-genai's config of the input: written beside the output with the "
        "kept head counts and the output's file name (layers must keep equal counts)",
    )  # fmt: skip
    p.add_argument(
        "--ignore", nargs="+", default=[], metavar="NAME",
        help="node or initializer names (glob patterns) to leave untouched",
    )  # fmt: skip
    p.add_argument("--approximate-norms", action="store_true", help=APPROXIMATE_HELP)
    p.add_argument(
        "--approximate-dynamic-quant", action="store_true", help=APPROXIMATE_DYNAMIC_QUANT_HELP
    )
    p.add_argument("--plan", help="re-apply the exact channels of an earlier report")
    p.add_argument("--inputs", help="NPZ of inputs for validation, keyed by input name")
    p.add_argument(
        "--input-shape", nargs="+", default=[], metavar="NAME=D,D,...",
        help="shapes for random validation inputs (symbolic dims)",
    )  # fmt: skip
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--html", metavar="REPORT.html", help="write an HTML diff of the pruned pair")
    p.add_argument("--bench", action="store_true", help="time both models in onnxruntime")
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="run neither model in onnxruntime (ONNX checker and interface only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT_S, help=RUN_TIMEOUT_HELP
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--strict", action="store_true",
        help=f"exit with code {NOTHING_PRUNED} and write nothing when nothing was pruned, "
        f"with {LATENCY_MISSED} when a latency target ended outside its tolerance",
    )  # fmt: skip

    calib = p.add_argument_group("post-training pruning (calibration data)")
    calib.add_argument(
        "--calib", metavar="NPZ_OR_DIR", help="NPZ keyed by input name, samples on axis 0"
    )
    calib.add_argument(
        "--calib-random", type=int, metavar="N", help="N seeded random samples (data-free)"
    )
    calib.add_argument("--calib-batch", type=int, default=32, help="samples per onnxruntime run")
    calib.add_argument(
        "--calib-mode", choices=CALIB_MODES, default="auto",
        help="whole model in one session, or sequential: one layer at a time, each layer "
        "repaired from the pruned layers before it (auto: sequential when the model's "
        "session does not fit in memory)",
    )  # fmt: skip
    calib.add_argument(
        "--compensate", choices=METHODS, default="none",
        help="adjust the consumers of removed channels: bias (FLAP) or least squares (OBS)",
    )  # fmt: skip
    calib.add_argument(
        "--damp", type=_damp, default=DEFAULT_DAMP, metavar="D|auto",
        help="least-squares damping, x mean(diag X^T X); auto: per layer, the least error "
        "on held-out folds of the calibration data",
    )  # fmt: skip
    calib.add_argument(
        "--calib-mask", default="auto", metavar="INPUT|auto|none",
        help="input whose zeros mark padding positions, left out of the statistics "
        "(auto: attention_mask, if the model has it)",
    )  # fmt: skip
    calib.add_argument("--target-macs", type=float, metavar="F", help="fraction of MACs to keep")
    calib.add_argument(
        "--target-params", type=float, metavar="F", help="fraction of parameters to keep"
    )
    recover = p.add_argument_group("recovery (graphprune finetune, on the calibration data)")
    recover.add_argument(
        "--recover", type=int, metavar="STEPS",
        help="distil the pruned model towards the original for STEPS steps (needs torch)",
    )  # fmt: skip
    recover.add_argument("--recover-lr", type=float, default=1e-4, help="its learning rate")
    add_latency_options(p)
    p.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> PruneOptions:
    """The pipeline's options from the command line, checked before anything runs."""
    budget = _budget(args)
    latency = latency_from(args)
    if latency is not None and (args.ratio is not None or budget is not None or args.plan):
        raise GraphpruneError("give a latency target or --ratio/--target-macs/--plan, not both")
    # A kind's own ratio is a target by itself: `--only experts --expert-ratio 0.5`.
    targets = (args.ratio, args.plan, budget, latency, args.head_ratio, args.expert_ratio)
    if all(target is None for target in targets) and not args.drop_blocks:
        raise GraphpruneError(
            "give --ratio R, --head-ratio R, --expert-ratio R, --target-macs F, "
            "--target-params F, --target-latency F, --drop-blocks N or --plan"
        )
    check_outputs(
        {"-o": args.output, "--report": args.report, "--html": args.html},
        [args.model], {"--plan": args.plan, "--calib": args.calib, "--inputs": args.inputs,
                       "--latency-table": args.latency_table},
    )  # fmt: skip
    _check_numbers(args)
    return PruneOptions(
        model=args.model,
        plan=PlanOptions(
            ratio=args.ratio or 0.0,
            criterion=args.criterion,
            global_ranking=args.global_ranking,
            round_to=args.round_to,
            min_keep=args.min_keep,
            max_group_ratio=args.max_group_ratio,
            ignore=tuple(args.ignore),
            reduction=args.reduction,
            normalization=args.normalization,
            seed=args.seed,
            budget=budget or (latency and Budget("latency", 1.0)),
            only=tuple(args.only),
            kind_ratios={
                kind: value
                for kind, value in (("heads", args.head_ratio), ("experts", args.expert_ratio))
                if value is not None
            },
            drop_blocks=args.drop_blocks,
            block_criterion=args.block_criterion,
        ),
        block_unit=args.block_unit,
        plan_record=_plan_record(args.plan) if args.plan else None,
        approximate_norms=args.approximate_norms,
        approximate_dynamic_quant=args.approximate_dynamic_quant,
        prune_outputs=args.prune_outputs,
        prune_kv_cache=args.prune_kv_cache,
        calibration=CalibrationOptions(
            path=args.calib,
            random=args.calib_random,
            batch=args.calib_batch,
            mode=args.calib_mode,
            mask=args.calib_mask,
        ),
        compensate=args.compensate,
        damp=args.damp,
        inputs=args.inputs,
        input_shapes=parse_shapes(args.input_shape),
        seed=args.seed,
        bench=args.timing if args.bench else None,
        validate=args.validate,
        output=args.output,
        # Bars redraw a line with carriage returns: only a terminal shows that cleanly.
        progress=not args.quiet and sys.stderr.isatty(),
        latency=latency,
        recover=_recover_options(args),
    )


def _recover_options(args: argparse.Namespace) -> FinetuneOptions | None:
    if args.recover is None:
        return None
    return FinetuneOptions(steps=args.recover, lr=args.recover_lr, batch=args.calib_batch,
                           seed=args.seed, progress=not args.quiet and sys.stderr.isatty())


def _check_numbers(args: argparse.Namespace) -> None:
    """Values the library checks only where it uses them are refused here in any case."""
    check_number("--max-group-ratio", args.max_group_ratio, 0.0, 1.0)
    check_number("--calib-random", args.calib_random, 1)
    check_number("--calib-batch", args.calib_batch, 1)
    if args.damp != "auto":
        check_number("--damp", args.damp, 0.0)
    check_number("--seed", args.seed, 0)
    check_number("--drop-blocks", args.drop_blocks, 0)


def _damp(text: str) -> float | str:
    """--damp: a number, or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def _plan_record(path: str) -> dict:
    """The "plan" of an earlier report (or a bare plan), with the shape plan_from_json reads."""
    earlier = read_json(path, "plan")
    record = earlier.get("plan", earlier) if isinstance(earlier, dict) else None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("options", {}), dict)
        or not isinstance(record.get("groups", []), list)
    ):
        raise GraphpruneError(f"{path} is not a graphprune report or plan")
    return record


def _budget(args: argparse.Namespace) -> Budget | None:
    if args.target_macs is not None and args.target_params is not None:
        raise GraphpruneError("give --target-macs or --target-params, not both")
    targets = {"macs": args.target_macs, "params": args.target_params}
    metric = next((name for name, value in targets.items() if value is not None), None)
    if metric is None:
        return None
    if args.ratio is not None:
        raise GraphpruneError(f"give --ratio or --target-{metric}, not both")
    return Budget(metric, targets[metric])


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    limit_runs(args.run_timeout)
    result = prune_model(options)
    if args.strict and _nothing_pruned(result.report):
        why = _shortfall(result.report) or "nothing pruned"
        print(f"graphprune: error: {why} (--strict: nothing written)", file=sys.stderr)
        return NOTHING_PRUNED
    latency = result.report.get("latency")
    if args.strict and latency is not None and not latency["within_tolerance"]:
        print(f"graphprune: error: {_latency_line(latency)} (--strict: nothing written)",
              file=sys.stderr)  # fmt: skip
        return LATENCY_MISSED
    report = json.dumps(result.report, indent=2) + "\n"
    html = _html(args, result) if args.html else ""
    genai = _genai(args, result) if args.genai_config else None
    # The file as written must pass the checks its input passed, or nothing is written.
    check = result.checks
    writes = [
        (
            args.output,
            lambda: save_model(result.model, args.output, progress=options.progress, check=check),
        ),
        (args.report, lambda: write_text_atomically(args.report, report)),
        (args.html, lambda: write_text_atomically(args.html, html)),
        *([genai] if genai else []),
    ]
    write_all([(path, write) for path, write in writes if path])
    _print_summary(result.report)
    return 0


def _genai(args: argparse.Namespace, result: PruneResult) -> tuple[str, Callable[[], None]]:
    """genai_config.json beside the output, rewritten (never over the input's)."""
    source = Path(args.genai_config)
    if not args.output:
        raise GraphpruneError("--genai-config needs -o (it is written beside the model)")
    target = Path(args.output).parent / "genai_config.json"
    if target.resolve() == source.resolve():
        raise GraphpruneError(
            f"--genai-config would overwrite {source}: write the model to another folder"
        )
    try:
        text = source.read_text()
    except OSError as error:
        raise GraphpruneError(f"cannot read {source}: {error.strerror}") from None
    config = genai_config(text, result.model, Path(args.output).name)
    return str(target), lambda: write_text_atomically(str(target), config)


def _html(args: argparse.Namespace, result: PruneResult) -> str:
    pair = diff_models(
        result.original, result.model, result.shapes, analysis=result.analysis,
        labels=(str(args.model), str(args.output)),
    )  # fmt: skip
    pair["validation"] = result.report["validation"]
    return diff_html(pair)


def _print_summary(report: PruneReport) -> None:
    params, macs = report["params"], report["macs"]
    deviations = [o["max_rel"] for o in report["validation"]["outputs"] if o["max_rel"] is not None]
    worst = max(deviations, default=0.0)
    pruned_groups = sum(1 for g in report["groups"] if g["removed"])
    print(f"pruned {pruned_groups} of {len(report['groups'])} groups -> {report['output']}")
    shortfall = _shortfall(report)
    if shortfall:
        print(shortfall)
    if "blocks" in report:
        dropped = [row["name"] for row in report["blocks"] if row["dropped"]]
        print(f"dropped {len(dropped)} of {len(report['blocks'])} residual units: "
              f"{', '.join(dropped)}")  # fmt: skip
    print(
        f"params {params['before']:,} -> {params['after']:,} "
        f"(-{params['removed_fraction']:.1%}), MACs {macs['before']:,} -> {macs['after']:,} "
        f"(-{macs['removed_fraction']:.1%})"
    )
    outputs = report["validation"]["outputs"]
    changed = [f"{o['name']} {o['shape_before']} -> {o['shape']}" for o in outputs
               if "shape_before" in o]  # fmt: skip
    shapes = f"pruned outputs {', '.join(changed)}" if changed else "output shapes unchanged"
    validation = report["validation"]
    if "skipped" in validation:
        print(f"note: not run in onnxruntime: {validation['skipped']}; the pruned model "
              "passed the ONNX checks its input passes and keeps its interface")  # fmt: skip
    else:
        how = f" {validation['mode']}" if "mode" in validation else ""
        print(
            f"validated on {validation['execution_provider']}{how}: {shapes}, "
            f"max relative deviation {worst:.3g}"
        )
    notes = [*report.get("input_notes", []), report.get("calibration", {}).get("batch_note")]
    for note in filter(None, notes):  # choices the user did not make: said, not silent
        print(f"note: {note}")
    if "latency" in report:
        print(_latency_line(report["latency"]))
    if "recovery" in report:
        r = report["recovery"]
        print(f"recovered: {r['steps']} steps of distillation, loss "
              f"{r['loss_before']['total']:.4g} -> {r['loss_after']['total']:.4g} "
              f"({r['train_s']:.1f} s on {r['device']})")  # fmt: skip
    if "bench" in report:
        b = report["bench"]
        print(
            f"latency {b['latency_ms_before']:.3f} ms -> {b['latency_ms_after']:.3f} ms "
            f"({b['speedup']:.2f}x, {_timed(b['timing'], b['copies_ms_before'])})"
        )


def _latency_line(lat: dict) -> str:
    return (
        f"latency target {lat['target_ms']:.3f} ms ({lat['target_fraction']:.1%}): "
        f"predicted {lat['predicted_ms']:.3f} ms, "
        f"measured {lat['measured_ms']:.3f} ms of {lat['original_ms']:.3f} ms "
        f"({lat['measured_fraction']:.1%}, {_count(len(lat['attempts']), 'round')}, "
        f"{_timed(lat['timing'], lat['copies_ms'])}"
        + ("" if lat["within_tolerance"] else f", outside ±{lat['tolerance'] * 100:g}%")
        + ")"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _timed(timing: str, copies: dict) -> str:
    """Which latency was timed, and the original's copies it leaves out or includes."""
    how = "copies excluded" if timing == "device" else "copies included"
    return (
        f"{timing} timing, {how}: inputs in {copies['upload_ms']:.3f} ms, "
        f"outputs out {copies['download_ms']:.3f} ms"
    )


def _nothing_pruned(report: PruneReport) -> bool:
    return not any(g["removed"] for g in report["groups"]) and not any(
        row["dropped"] for row in report.get("blocks", [])
    )


def _shortfall(report: PruneReport) -> str | None:
    """When barriers kept groups and the prune removed nothing, or less than half of what
    was asked: the barrier that keeps the most groups and the option that lifts it."""
    barriers, groups = report["barriers"], report["groups"]
    if not barriers:
        return None
    if _nothing_pruned(report):
        what = "nothing pruned"
    else:
        asked, got = _asked(report)
        if asked is None or got >= asked / 2:
            return None
        what = f"pruned {got:.1%} where {asked:.0%} was asked"
    top = barriers[0]
    kept = sum(1 for g in groups if not g["prunable"])
    lift = f"; {top['option']} lifts it" if "option" in top else ""
    return (
        f"{what}: {kept} of {len(groups)} groups are kept by barriers, most often "
        f"({top['groups']} groups) {top['reason']}{lift}"
    )


def _asked(report: PruneReport) -> tuple[float | None, float]:
    """What was asked and what was removed: a fraction of the channels (--ratio; of the
    kinds --only names), of the MACs or of the parameters (--target-macs, --target-params);
    None for other targets."""
    options = report["plan"]["options"]
    for metric in ("macs", "params"):
        if f"target_{metric}" in options:
            return 1 - options[f"target_{metric}"], report[metric]["removed_fraction"]
    kinds = set(options.get("only") or []) or {g["kind"] for g in report["groups"]} - {"blocks"}
    channels = [g for g in report["groups"] if g["kind"] in kinds]
    total = sum(g["channels"] for g in channels)
    removed = sum(len(g["removed"]) for g in channels)
    return (options.get("ratio") or None), removed / max(total, 1)
