"""Markdown tables for BENCHMARKS.md, rendered by tabulate (GitHub's pipe format)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate


def markdown(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    headers: Sequence[str] | str = "keys",
    *,
    floatfmt: str = "g",
) -> str:
    """A GitHub-flavoured markdown table: `rows` are sequences under `headers`, or dicts
    whose keys are the headers (the default, "keys")."""
    return tabulate(list(rows), headers=headers, tablefmt="github", floatfmt=floatfmt)
