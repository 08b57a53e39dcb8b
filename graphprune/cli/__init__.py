"""The `graphprune` command line: analyze, prune, diff, --version. Each command is one
module that parses its options, calls the library and prints.

Exit codes: 0 success; 1 bad input or a model that cannot be pruned safely (one line on
stderr, no traceback); 2 bad usage; 3 `diff --exit-code` found structural changes; 4
`prune --strict` pruned nothing (`prune.NOTHING_PRUNED`); 70 an internal error (a bug:
please report it; `--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import numpy as np

from ..errors import GraphpruneError, InternalError, first_line
from ..version import __version__
from . import analyze, diff, finetune, profile, prune, sweep

INTERNAL_ERROR = 70  # EX_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # NaN or inf in a user's weights or data would print numpy's warnings before the
        # one line that says what is wrong.
        with np.errstate(all="ignore"):
            return args.run(args)
    except GraphpruneError as error:
        print(f"graphprune: error: {error}", file=sys.stderr)
        return 1
    except MemoryError as error:  # the machine's limit, not a bug: numpy says how much
        print(f"graphprune: error: out of memory: {first_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except InternalError as error:
        print(f"graphprune: internal error, please report: {error}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return INTERNAL_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphprune", description="Structural channel pruning for ONNX models."
    )
    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (analyze, diff, prune, finetune, profile, sweep):
        command.add_parser(commands)
    return parser
