"""Checkpoints of a recovery run, only in the folder the user names: the trained values
and the optimizer's state after a step, written atomically (a temporary file in the
folder, then a rename). A run resumes from the newest one that the same run wrote (the
same model, teacher, data and options: `key`) and then computes exactly what the
uninterrupted run would have: the batches and the learning rate depend only on the
step. The two newest are kept."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from ..errors import GraphpruneError, first_line

_NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")
KEEP = 2


def _existing(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save(folder: Path, key: str, step: int, params, optimizer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1, "key": key, "step": step,
        "params": [p.detach().cpu().clone() for p in params],
        "optimizer": optimizer.state_dict(),
    }  # fmt: skip
    path = folder / f"checkpoint-{step:08d}.pt"
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    for _, old in _existing(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(folder: Path, key: str, params, optimizer) -> int:
    """Restore the newest checkpoint into `params` and `optimizer`; its step (0: none)."""
    found = _existing(folder)
    if not found:
        return 0
    path = found[-1][1]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to replace
        raise GraphpruneError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    if not isinstance(state, dict) or state.get("key") != key:
        raise GraphpruneError(
            f"checkpoint {path} was written by another run (model, teacher, data or options "
            "differ); resume with the same ones, or give another --checkpoint-dir"
        )
    with torch.no_grad():
        for param, value in zip(params, state["params"], strict=True):
            param.copy_(value.to(param.device))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
