"""`graphprune diff A B`: what changed between two models, layer by layer."""

from __future__ import annotations

import argparse
import json

from ..api import load
from ..inspect.diff import diff_models, structural_changes
from ..inspect.html import diff_html
from ..inspect.text import diff_text
from ..io.saving import write_text_atomically
from ..runtime.inputs import check_given_shapes, input_shapes, load_inputs, random_inputs
from ..runtime.sessions import DEFAULT_RUN_TIMEOUT_S, limit_runs
from .common import RUN_TIMEOUT_HELP, check_number, check_outputs, parse_shapes, write_all

STRUCTURES_DIFFER = 3  # the exit code of --exit-code when the structures differ


def add_parser(commands) -> None:
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
    d.add_argument(
        "--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT_S, help=RUN_TIMEOUT_HELP
    )
    d.add_argument("--exit-code", action="store_true", help="exit 3 when the structures differ")
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    json_path = None if args.json == "-" else args.json
    check_outputs({"--json": json_path, "--html": args.html}, [args.before, args.after],
                  {"--inputs": args.inputs})  # fmt: skip
    check_number("--seed", args.seed, 0)
    limit_runs(args.run_timeout)
    shapes = parse_shapes(args.input_shape)
    if shapes:
        check_given_shapes(load(args.before), shapes)
    feeds = None
    if args.inputs:
        feeds = load_inputs(args.inputs)
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    elif args.validate:
        model = load(args.before)
        feeds = random_inputs(model, input_shapes(model, shapes), args.seed)
    result = diff_models(args.before, args.after, input_shapes=shapes or None, feeds=feeds)
    text = json.dumps(result, indent=2, sort_keys=True)
    html = diff_html(result) if args.html else ""
    print(text if args.json == "-" else diff_text(result, all_layers=args.all))
    writes = [(json_path, lambda: write_text_atomically(json_path, text + "\n"))]
    writes.append((args.html, lambda: write_text_atomically(args.html, html)))
    write_all([(path, write) for path, write in writes if path])
    return STRUCTURES_DIFFER if args.exit_code and structural_changes(result) else 0
