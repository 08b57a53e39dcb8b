"""User paths (`graphprune.io.paths`): every hostile path is one line naming the path and
what is wrong, a FIFO is never opened, and written outputs carry the user's umask. The
whole command line on these paths is `tools/fuzz.py`'s input_paths, output_hostile and
external_paths classes (a few cases of each in tests/test_hostile.py)."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import onnx
import pytest
from fuzz_models import conv_net

from graphprune.errors import GraphpruneError
from graphprune.io import paths
from graphprune.io.paths import readable_file, readable_files, shown, writable_file
from graphprune.io.saving import save_model, write_text_atomically


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.bin").write_bytes(b"data")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nothing")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe")
    return tmp_path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("loop", "a loop of symbolic links"),
        ("n" * 256, "the name is too long"),
        ("/".join(["d" * 200] * 21), "the name is too long"),
        ("sub", "it is a folder"),
        ("pipe", "it is not a regular file (a FIFO, socket or device)"),
        ("/dev/zero", "it is not a regular file (a FIFO, socket or device)"),
        ("nowhere/file.bin", "no such file"),
        ("file.bin/x", "a part of the path is not a folder"),
        ("dangling", "no such file"),
        ("a\0b", "a path cannot hold a NUL byte"),
    ],
)
def test_an_input_that_cannot_be_read_is_one_line(folder, path, reason):
    with pytest.raises(GraphpruneError) as raised:
        readable_file(path, "--inputs")
    message = str(raised.value)
    assert message.startswith(f"--inputs {shown(path)}" if "\0" in path else "cannot read")
    assert message.endswith(reason) and "\n" not in message and "\0" not in message
    assert len(message) < 250


def test_an_unreadable_file_is_one_line(folder, monkeypatch):
    """Root reads mode-000 files, so the refusal is simulated here (os.open failing as it
    does for a user); tools/fuzz.py drops root's override and shows the real thing."""
    (folder / "secret.bin").write_bytes(b"x")
    (folder / "secret.bin").chmod(0)
    opened = os.open

    def denied(path, flags, *args):
        if str(path).endswith("secret.bin"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return opened(path, flags, *args)

    monkeypatch.setattr(paths.os, "open", denied)
    expected = r"^cannot read the model secret\.bin: permission denied$"
    with pytest.raises(GraphpruneError, match=expected):
        readable_file("secret.bin", "the model")


def test_a_fifo_is_refused_without_being_opened(folder, monkeypatch):
    monkeypatch.setattr(paths.os, "open", lambda *_: pytest.fail("a FIFO was opened"))
    with pytest.raises(GraphpruneError, match="not a regular file"):
        readable_file("pipe", "--plan")
    with pytest.raises(GraphpruneError, match="not a regular file"):
        readable_files("pipe", "--calib", ".npz")


def test_a_folder_of_files_is_checked_file_by_file(folder):
    np.savez(folder / "sub" / "b.npz", x=np.ones(1))
    np.savez(folder / "sub" / "a.npz", x=np.ones(1))
    (folder / "sub" / "notes.txt").write_text("not data")
    found = readable_files("sub", "--calib", ".npz")
    assert [str(path) for path in found] == ["sub/a.npz", "sub/b.npz"]
    os.mkfifo(folder / "sub" / "c.npz")
    with pytest.raises(GraphpruneError, match=r"cannot read --calib sub/c\.npz: it is not a"):
        readable_files("sub", "--calib", ".npz")
    (folder / "empty").mkdir()
    with pytest.raises(GraphpruneError, match=r"is a folder without \.npz files"):
        readable_files("empty", "--calib", ".npz")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("loop", "-o loop: a loop of symbolic links"),
        ("loop/out.onnx", "-o loop/out.onnx: a loop of symbolic links"),
        ("n" * 256, f"-o {shown('n' * 256)}: the name is too long"),
        ("sub", "-o sub exists and is a folder"),
        ("pipe", "-o pipe exists and is not a regular file"),
        ("file.bin/out.onnx", "-o file.bin/out.onnx: a part of the path is not a folder"),
        ("", "-o needs a path"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line(folder, path, message):
    with pytest.raises(GraphpruneError) as raised:
        writable_file(path, "-o")
    assert str(raised.value) == message


def test_outputs_that_can_be_written(folder):
    assert writable_file("n" * 255, "-o").name == "n" * 255  # the longest valid name
    assert writable_file("dangling", "-o").name == "dangling"  # the rename replaces the link
    assert writable_file("file.bin", "-o").name == "file.bin"
    with pytest.raises(GraphpruneError, match=r"folder .*nowhere does not exist"):
        writable_file("nowhere/out.onnx", "-o")


def test_shown_paths_stay_one_short_line():
    assert shown("a\nb\0c") == "a\\nb\\x00c"
    assert len(shown("x" * 5000)) < 200
    assert shown("plain/path.onnx") == "plain/path.onnx"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_carry_the_users_umask(tmp_path, umask):
    """Reports, sweep tables and HTML like models: 0666 less the umask (mkstemp's 0600
    before), and a name of 255 bytes fits its staged copy."""
    previous = os.umask(umask)
    try:
        write_text_atomically(tmp_path / "r.json", "{}\n")
        save_model(conv_net(), tmp_path / "m.onnx")
        write_text_atomically(tmp_path / ("n" * 250 + ".html"), "<html></html>")
    finally:
        os.umask(previous)
    for name in ("r.json", "m.onnx", "n" * 250 + ".html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r.json", "m.onnx",
                                                                 "n" * 250 + ".html"])
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
