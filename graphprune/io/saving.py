"""Writing models atomically: a temporary file in the destination folder, checked as
written when asked, then a rename, so a failure never leaves a half-written (or invalid)
model and readers never see one.

The file is staged in a private temporary folder (mode 0700) and created there with a
plain open, so that it carries the user's umask like any other file (tempfile.mkstemp
would make it 0600); the folder's name is short, so that any name the folder takes as
a file also fits its staged copy."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .checks import CheckLevel, check_file
from .large import too_large, write_external, write_inline

_STAGING = ".graphprune-"  # the staging folder's prefix


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    progress: bool = False,
    check: CheckLevel | None = None,
) -> Path:
    """Save `model` to `path`; models over 2 GB keep their weights in `<name>.data`.
    Either way the weights are written tensor by tensor (`graphprune.io.large`), weights
    on disk copied a chunk at a time; `progress` shows a bar of bytes written. With
    `check`, the staged bytes must pass the ONNX checker at that level
    (`graphprune.io.checks`) before anything is renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = too_large(model)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=_STAGING) as folder:
        staged = Path(folder) / path.name
        data_name = f"{path.name}.data"
        if external:
            write_external(model, staged, data_name, progress=progress)
        else:
            write_inline(model, staged, progress=progress)  # the same bytes, one at a time
        if check is not None:
            check_file(staged, check)
        if external:
            os.replace(Path(folder) / data_name, path.parent / data_name)
        os.replace(staged, path)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=_STAGING) as folder:
        staged = Path(folder) / path.name
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, path)
