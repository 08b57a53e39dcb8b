"""Export zoo models to ONNX with either torch exporter, reproducibly, and cache the results.

Usage::

    python -m models.export --all --out DIR
    python -m models.export NAME [NAME ...] --exporter dynamo --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import time
import uuid
import warnings
from pathlib import Path

import onnx
import torch

from .zoo import ZOO, build, example_input

EXPORTERS = ("dynamo", "classic")
OPSET = 18
REPO = Path(__file__).resolve().parent.parent

_VOLATILE_METADATA = frozenset({"pkg.torch.onnx.stack_trace"})

# (model, exporter) pairs an exporter cannot handle, with the reason; none at the moment.
UNSUPPORTED: dict[tuple[str, str], str] = {}


class ExportError(RuntimeError):
    """A zoo model cannot be exported with the requested exporter."""


def to_proto(name: str, exporter: str) -> onnx.ModelProto:
    """Export zoo model ``name`` in eval mode with its seeded weights and static input shape."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    if (name, exporter) in UNSUPPORTED:
        raise ExportError(
            f"{name} cannot be exported with {exporter}: {UNSUPPORTED[name, exporter]}"
        )
    # Without torchvision the dynamo exporter logs a warning per torchvision op it skips.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model = build(name)
    args = (example_input(name),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=OPSET,
                external_data=False,
                input_names=["input"],
                output_names=["output"],
                verbose=False,
            )
            assert program is not None
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                model,
                args,
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
            proto = onnx.load_from_string(buffer.getvalue())
    return normalize(proto)


def normalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what varies between runs or machines: doc strings and source stack traces.

    The dynamo exporter records, per node, the module scope, class hierarchy, FX node and a
    stack trace in ``metadata_props``. Real dynamo exports carry them, so they stay (a pruner
    must cope with them), except the stack trace: it holds absolute source paths and line
    numbers, which would tie the bytes to the checkout location.
    """
    proto.doc_string = ""
    proto.graph.doc_string = ""

    def clean(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            node.doc_string = ""
            kept = [p for p in node.metadata_props if p.key not in _VOLATILE_METADATA]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    clean(attribute.g)
                for sub in attribute.graphs:
                    clean(sub)

    clean(proto.graph)
    for function in proto.functions:
        function.doc_string = ""
    return proto


def export(name: str, exporter: str, path: Path) -> Path:
    """Export ``name`` with ``exporter`` to the single self-contained file ``path``."""
    return save_atomically(to_proto(name, exporter), path)


def save_atomically(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` (deterministic bytes) to ``path`` through a temporary sibling renamed
    into place, so concurrent writers of the same path (parallel test workers) never expose
    a partial file."""
    path = Path(path)
    data = proto.SerializeToString(deterministic=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling opened with "xb" (not mkstemp, whose 0600 mode would stick).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cached_build(stem: str, build, fingerprint: str | None = None) -> Path:
    """``<cache>/<stem>.<fingerprint>.onnx`` (default: the zoo sources' fingerprint), built
    by ``build()`` and saved atomically when missing."""
    path = cache_dir() / f"{stem}.{fingerprint or source_fingerprint()}.onnx"
    if not path.is_file():
        save_atomically(build(), path)
    return path


def cache_dir() -> Path:
    """``$GRAPHPRUNE_ZOO_CACHE`` or ``<repo>/models/.cache/<torch version>/``."""
    override = os.environ.get("GRAPHPRUNE_ZOO_CACHE")
    if override:
        return Path(override)
    return REPO / "models" / ".cache" / torch.__version__


def source_fingerprint() -> str:
    """Short hash of the zoo and exporter sources, so editing a model invalidates the cache."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def cached(name: str, exporter: str) -> Path:
    """Path of the cached export of ``name`` with ``exporter``, exporting it if missing.

    The file name carries a fingerprint of the model sources, so a stale export is never
    reused after any ``models/*.py`` source changes (the torch version is in the directory).
    """
    return cached_build(f"{name}.{exporter}", lambda: to_proto(name, exporter))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints one line per exported file with its timing."""
    parser = argparse.ArgumentParser(
        prog="python -m models.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help=f"zoo models: {', '.join(ZOO)}")
    parser.add_argument("--all", action="store_true", help="export every zoo model")
    parser.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    names = list(ZOO) if args.all else args.names
    if not names:
        parser.error("give model names or --all")
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)}")
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    failed = 0
    for name in names:
        for exporter in exporters:
            start = time.perf_counter()
            path = (
                args.out / f"{name}.onnx"
                if len(exporters) == 1
                else (args.out / f"{name}.{exporter}.onnx")
            )
            try:
                export(name, exporter, path)
            except ExportError as error:
                print(f"skip {name} {exporter}: {error}", file=sys.stderr)
                failed += 1
                continue
            print(
                f"{path}  {exporter}  {time.perf_counter() - start:.1f}s  "
                f"{path.stat().st_size / 1e6:.2f} MB"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
