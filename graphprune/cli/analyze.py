"""`graphprune analyze MODEL`: the groups of coupled channels and why some are kept."""

from __future__ import annotations

import argparse
import json

from ..api import analyze, load
from ..core.blocks import UNITS
from ..core.coupling import graph_document, graph_format
from ..inspect.html import analysis_html
from ..inspect.report import analysis_json, analysis_text
from ..io.saving import write_text_atomically
from .common import APPROXIMATE_DYNAMIC_QUANT_HELP, APPROXIMATE_HELP, check_outputs, write_all


def add_parser(commands) -> None:
    a = commands.add_parser("analyze", help="list the groups of coupled channels")
    a.add_argument("model")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--approximate-norms", action="store_true", help=APPROXIMATE_HELP)
    a.add_argument(
        "--approximate-dynamic-quant", action="store_true", help=APPROXIMATE_DYNAMIC_QUANT_HELP
    )
    a.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    a.add_argument(
        "--graph", metavar="OUT.graphml|OUT.json",
        help="write the coupling graph (why channels go together) as GraphML or node-link JSON",
    )  # fmt: skip
    a.add_argument(
        "--blocks", nargs="?", const="layer", choices=UNITS, default=None,
        help="also list residual blocks (groups of kind blocks), per layer (default) or branch",
    )  # fmt: skip
    a.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_outputs({"--html": args.html, "--graph": args.graph}, [args.model])
    form = graph_format(args.graph) if args.graph else ""  # refused before any work
    model = load(args.model)
    analysis = analyze(
        model, approximate_norms=args.approximate_norms,
        approximate_dynamic_quant=args.approximate_dynamic_quant, blocks=args.blocks,
    )  # fmt: skip
    text = json.dumps(analysis_json(analysis), indent=2) if args.json else analysis_text(analysis)
    html = analysis_html(analysis, str(args.model)) if args.html else ""
    graph = graph_document(analysis.coupling_graph(), form) if args.graph else ""
    print(text)
    writes = [(args.html, lambda: write_text_atomically(args.html, html))] if args.html else []
    if args.graph:
        writes.append((args.graph, lambda: write_text_atomically(args.graph, graph)))
    if writes:
        write_all(writes)
    return 0
