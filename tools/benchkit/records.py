"""Result records: one JSON object a line, each carrying where and with what it was
measured (machine, versions, git commit), so that a number in BENCHMARKS.md can be traced
to its run.

A script hands rows to `emit`; `python -m tools.bench NAME --jsonl FILE` appends them,
with `environment()`, to FILE (and one line with the run's exit status and wall time)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("onnx", "onnxruntime", "onnxruntime-gpu", "torch", "numpy")

_emitted: list[dict[str, Any]] = []


def emit(row: dict[str, Any]) -> None:
    """Keep one result row for the run's records (JSON-serialisable values)."""
    _emitted.append(dict(row))


def take_emitted() -> list[dict[str, Any]]:
    """The rows emitted since the last call (and forget them)."""
    rows = list(_emitted)
    _emitted.clear()
    return rows


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError, StopIteration):
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD of the checkout the tools run from, '+dirty' with uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """python, graphprune and the installed packages of PACKAGES (read from their metadata:
    no import of torch just to name its version)."""
    from graphprune.version import __version__

    found = {"python": platform.python_version(), "graphprune": __version__}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


@cache
def environment() -> dict[str, Any]:
    """Machine, versions and commit of this run."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": usable,
            "system": f"{platform.system()} {platform.release()}",
        },
        "versions": versions(),
        "commit": git_commit(),
    }


def environment_line() -> str:
    """The environment in one line, for the top of a printed table."""
    env = environment()
    machine = env["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    usable = machine["usable_cpus"]
    cores = f"{machine['cpu_count']} logical cores" + (
        f" ({usable} usable)" if usable not in (None, machine["cpu_count"]) else ""
    )
    return f"machine: {machine['cpu']}; {cores}; {packages}; commit {env['commit']}"


def append(path: Path, benchmark: str, argv: list[str], rows: list[dict[str, Any]]) -> None:
    """Append one record a row to the JSON-lines file `path`."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"benchmark": benchmark, "argv": argv, "time": stamp, **environment()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps({**common, "row": row}, sort_keys=True, default=str) + "\n")
