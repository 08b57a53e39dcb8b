"""`graphprune diff A B`: what changed between two models, layer by layer."""

from __future__ import annotations

import argparse
import json

from ..api import load
from ..inspect.diff import diff_models, structural_changes
from ..inspect.html import diff_html
from ..inspect.text import diff_text
from ..io.saving import write_text_atomically
from ..runtime.inputs import input_shapes, load_inputs, random_inputs
from .common import parse_shapes

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
    d.add_argument("--exit-code", action="store_true", help="exit 3 when the structures differ")
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    shapes = parse_shapes(args.input_shape)
    feeds = None
    if args.inputs:
        feeds = load_inputs(args.inputs)
        shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    elif args.validate:
        model = load(args.before)
        feeds = random_inputs(model, input_shapes(model, shapes), args.seed)
    result = diff_models(args.before, args.after, input_shapes=shapes or None, feeds=feeds)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text if args.json == "-" else diff_text(result, all_layers=args.all))
    if args.json and args.json != "-":
        write_text_atomically(args.json, text + "\n")
    if args.html:
        write_text_atomically(args.html, diff_html(result))
    return STRUCTURES_DIFFER if args.exit_code and structural_changes(result) else 0
