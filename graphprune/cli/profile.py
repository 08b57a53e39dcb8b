"""`graphprune profile MODEL -o TABLE.json`: time every prunable layer at a grid of widths
on the deployment provider; `prune --latency-table TABLE.json` reuses it. Also the latency
options that `prune` and `sweep` share."""

from __future__ import annotations

import argparse

from ..api import analyze, load
from ..errors import GraphpruneError
from ..io.saving import write_text_atomically
from ..planning.latency import LatencyCostModel, snap_steps
from ..planning.target import LatencyTarget
from ..runtime.binding import TIMINGS
from ..runtime.inputs import check_given_shapes
from ..runtime.probe import choose_inputs
from ..runtime.profile import (
    PROVIDERS,
    LatencyTable,
    ProfileOptions,
    check_provider,
    profile,
    write_table,
)  # fmt: skip
from ..runtime.sessions import DEFAULT_RUN_TIMEOUT_S, limit_runs
from .common import RUN_TIMEOUT_HELP, check_number, check_outputs, parse_shapes, read_json

PROVIDER_HELP = "onnxruntime execution provider to time on (default cpu)"
TIMING_HELP = (
    "device: inputs and outputs bound in the provider's memory (onnxruntime IO binding), "
    "the model's latency alone; end-to-end: host arrays, the copies to and from the "
    "device included (default device; the copies are reported apart either way)"
)


def add_parser(commands) -> None:
    p = commands.add_parser("profile", help="time each prunable layer at a grid of widths")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="write the latency table here (JSON)")
    add_timing_options(p)
    p.add_argument(
        "--input-shape", nargs="+", default=[], metavar="NAME=D,D,...",
        help="input shapes to time at (symbolic dims)",
    )  # fmt: skip
    p.add_argument(
        "--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT_S, help=RUN_TIMEOUT_HELP
    )
    p.set_defaults(run=run)


def add_timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="cpu", choices=sorted(PROVIDERS), help=PROVIDER_HELP)
    p.add_argument("--threads", type=int, help="intra-op threads (default: every usable core)")
    p.add_argument(
        "--repeats", type=int, default=15,
        help="at most this many alternated timing rounds (fewer once the medians are stable)",
    )  # fmt: skip
    p.add_argument("--timing", choices=TIMINGS, default="device", help=TIMING_HELP)


def add_latency_options(p: argparse.ArgumentParser) -> None:
    """`prune`'s options for a latency target."""
    group = p.add_argument_group("latency target (measured on the deployment provider)")
    group.add_argument(
        "--target-latency", type=float, metavar="F",
        help="keep this fraction of the original's measured latency",
    )  # fmt: skip
    group.add_argument("--target-ms", type=float, metavar="MS", help="reach this latency (ms)")
    group.add_argument(
        "--latency-table", metavar="TABLE.json", help="from `graphprune profile` (else profiled)"
    )
    group.add_argument(
        "--latency-tolerance", type=float, default=0.05, help="measured within this of target"
    )
    group.add_argument("--latency-iterations", type=int, default=5, help="plan-measure rounds")
    add_timing_options(group)


def latency_from(args: argparse.Namespace) -> LatencyTarget | None:
    """The latency target of `prune`'s options, or None; the table is read and checked."""
    if args.target_latency is None and args.target_ms is None:
        if args.latency_table is not None:
            raise GraphpruneError("--latency-table needs --target-latency or --target-ms")
        return None
    check_number("--repeats", args.repeats, 1)
    table = None
    if args.latency_table is not None:
        data = read_json(args.latency_table, "latency table")
        table = LatencyTable.from_json(data, args.latency_table)
    return LatencyTarget(
        fraction=args.target_latency, ms=args.target_ms, table=table,
        table_source=args.latency_table, profile=_profile_options(args),
        tolerance=args.latency_tolerance, iterations=args.latency_iterations,
        repeats=max(2 * args.repeats, 10),
    )  # fmt: skip


def _profile_options(args: argparse.Namespace) -> ProfileOptions:
    check_number("--threads", args.threads, 1)
    check_number("--repeats", args.repeats, 1)
    return ProfileOptions(
        provider=check_provider(args.provider), threads=args.threads, repeats=args.repeats,
        timing=args.timing,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    check_outputs({"-o": args.output}, [args.model])
    limit_runs(args.run_timeout)
    options = _profile_options(args)
    model = load(args.model)
    given = parse_shapes(args.input_shape)
    check_given_shapes(model, given)
    probed = choose_inputs(model, given, 0)
    analysis = analyze(model)
    table = profile(analysis, probed.shapes, probed.feeds, options)
    write_text_atomically(args.output, write_table(table))
    cost = LatencyCostModel(analysis, table)
    steps = snap_steps(analysis, cost, 1)
    profiled = sum(full for full, _ in cost.layers)
    snapped = sorted({s for s in steps.values() if s > 1})
    print(
        f"profiled {len(table.layers)} layers on {table.provider} ({table.threads} threads, "
        f"{table.timing} timing) -> {args.output}"
    )
    print(
        f"model {table.measured_ms:.3f} ms measured; profiled layers {profiled:.3f} ms alone, "
        f"the rest {cost.rest:.3f} ms"
    )
    groups = sum(step > 1 for step in steps.values())
    found = f"multiples of {', '.join(map(str, snapped))} ({groups} groups)" if snapped else "none"
    print(f"widths that pay: {found}")
    for note in probed.notes:
        print(f"note: {note}")
    return 0
