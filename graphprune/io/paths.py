"""Paths a user gives, checked before anything reads or writes them, each problem one line:
a loop of symbolic links, a name too long (one component or the whole path), a NUL byte,
a folder, a FIFO, socket or device where a file belongs, a file that cannot be read, a
missing folder. Python's own calls raise RuntimeError, ValueError or OSError for these
(and opening a FIFO blocks until someone writes to it), so every user path goes through
here once instead of each reader catching its own subset.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ..errors import GraphpruneError

# What an errno means for a path, in words a user can act on (strerror otherwise).
_REASONS = {
    errno.ENOENT: "no such file",
    errno.ELOOP: "a loop of symbolic links",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
MISSING = _REASONS[errno.ENOENT]
_SHOWN_CHARS = 120


def shown(path: str | os.PathLike) -> str:
    """A path for a one-line message: control characters (a NUL, a newline) escaped, the
    middle of a very long one elided."""
    text = os.fsdecode(path)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > _SHOWN_CHARS:
        text = f"{text[: _SHOWN_CHARS // 2]}...{text[-_SHOWN_CHARS // 3 :]}"
    return text


def reason(error: OSError) -> str:
    """A few words for why an operation on a path failed."""
    if error.errno in _REASONS:
        return _REASONS[error.errno]
    words = error.strerror or type(error).__name__
    return words[:1].lower() + words[1:]


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a regular file (a few words), or None when it can.
    Only a regular file is ever opened, and without blocking: stat first, then open with
    O_NONBLOCK and check again what was opened (a FIFO swapped in meanwhile)."""
    text = os.fspath(path)
    if "\0" in text:
        return "a path cannot hold a NUL byte"
    try:
        info = os.stat(text)
    except OSError as error:
        return reason(error)
    if not stat.S_ISREG(info.st_mode):
        return _not_regular(info.st_mode)
    try:
        handle = os.open(text, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return reason(error)
    try:
        mode = os.fstat(handle).st_mode
    finally:
        os.close(handle)
    return None if stat.S_ISREG(mode) else _not_regular(mode)


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "it is a folder"
    return "it is not a regular file (a FIFO, socket or device)"


def readable_file(path: str | os.PathLike, what: str) -> Path:
    """`path` when it is a regular file that can be read, else a one-line GraphpruneError
    ("cannot read WHAT PATH: REASON")."""
    _check_text(path, what)
    problem = file_problem(path)
    if problem is not None:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: {problem}")
    return Path(path)


def readable_files(path: str | os.PathLike, what: str, suffix: str) -> list[Path]:
    """The file `path`, or the files named *SUFFIX in the folder `path` (sorted by name),
    each a regular file that can be read; anything else is one line."""
    _check_text(path, what)
    try:
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as error:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: {reason(error)}") from None
    if not is_folder:
        return [readable_file(path, what)]
    try:
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries if entry.name.endswith(suffix))
    except OSError as error:
        raise GraphpruneError(f"cannot read {what} {shown(path)}: {reason(error)}") from None
    if not names:
        raise GraphpruneError(f"{what} {shown(path)} is a folder without {suffix} files")
    return [readable_file(Path(path) / name, what) for name in names]


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """`path` when a file can be written there (atomically: a new file in its folder, then
    a rename), else a one-line GraphpruneError: an existing folder, FIFO or link loop in
    its place, a name too long, a folder that is missing or cannot be written."""
    _check_text(path, option)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None  # a new file
    except OSError as error:
        raise GraphpruneError(f"{option} {shown(path)}: {reason(error)}") from None
    if info is not None and stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            info = None  # a dangling link: the rename replaces the link itself
        except OSError as error:
            raise GraphpruneError(f"{option} {shown(path)}: {reason(error)}") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise GraphpruneError(f"{option} {shown(path)} exists and is {what}")
    _check_folder(option, Path(os.path.abspath(path)).parent)
    return Path(path)


def _check_folder(option: str, folder: Path) -> None:
    try:
        is_folder = stat.S_ISDIR(os.stat(folder).st_mode)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise GraphpruneError(f"{option}: folder {shown(folder)}: {reason(error)}") from None
        is_folder = False
    if not is_folder:
        raise GraphpruneError(f"{option}: folder {shown(folder)} does not exist")
    try:  # a real write: permissions, read-only mounts, /proc (unnamed on Linux: no trace)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        why = reason(error)
        raise GraphpruneError(f"{option}: cannot write to {shown(folder)} ({why})") from None


def _check_text(path: str | os.PathLike, what: str) -> None:
    text = os.fsdecode(path)
    if not text:
        raise GraphpruneError(f"{what} needs a path")
    if "\0" in text:
        raise GraphpruneError(f"{what} {shown(text)}: a path cannot hold a NUL byte")
