"""Fingerprints of graphprune's outputs on the zoo: one line per (model, options) with the
SHA-256 of the pruned model and of the report's deterministic part (which holds the plan:
the removed channels of every group), and one line per model with the SHA-256 of
`analyze --json` and `analyze --blocks --json`.

Run it before and after a change that must not change behaviour (a refactor) and diff
the two files: any line that differs is a changed plan or a changed model byte.

    python tools/fingerprint.py > before.txt      # at the old commit
    python tools/fingerprint.py > after.txt       # at the new one
    diff before.txt after.txt

`--extra` adds onnxruntime-fused transformers, mixture-of-experts exports and the
third-party models already in `$GRAPHPRUNE_THIRDPARTY_CACHE` (nothing is downloaded).

It drives the command line in-process (the interface users have), so it runs unchanged
across internal rewrites. Exports come from the zoo caches (`models.export.cached`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from graphprune.cli import main as graphprune  # noqa: E402
from models import transformers_zoo  # noqa: E402
from models.export import EXPORTERS, cached  # noqa: E402
from models.zoo import ZOO  # noqa: E402

# Options that exercise every stage: per-group and global ranking, rounding, calibrated
# criteria with both compensations, budgets, kinds and head ratios.
CNN_OPTIONS = {
    "ratio": ["--ratio", "0.5"],
    "global": ["--ratio", "0.4", "--global", "--round-to", "4", "--criterion", "l1"],
    "flap-lsq": ["--target-macs", "0.6", "--criterion", "flap", "--compensate", "lsq",
                 "--calib-random", "8", "--calib-batch", "4"],
    "blocks": ["--drop-blocks", "1", "--block-criterion", "magnitude"],
}  # fmt: skip
TRANSFORMER_OPTIONS = {
    "ratio": ["--ratio", "0.3"],
    "heads": ["--ratio", "0.25", "--only", "heads", "--only", "mlp", "--head-ratio", "0.5"],
    "wanda-bias": ["--target-params", "0.8", "--criterion", "wanda", "--compensate", "bias",
                   "--calib-random", "4"],
    "blocks": ["--drop-blocks", "1", "--calib-random", "4", "--calib-batch", "4"],
}  # fmt: skip
FUSED_OPTIONS = {"ratio": ["--ratio", "0.3"]}
MOE_OPTIONS = {"experts": ["--ratio", "0.25", "--only", "experts", "--expert-ratio", "0.5"]}
THIRDPARTY = ("ppocrv4_det", "ppocrv4_rec", "ppocr_cls", "nudenet_320n", "ddddocr_old",
              "silero_vad")  # fmt: skip
_VOLATILE = {"timings", "model", "output"}


def fingerprint(model: Path, options: list[str], folder: Path) -> str:
    out, report = folder / "pruned.onnx", folder / "report.json"
    argv = ["prune", str(model), "-o", str(out), "--report", str(report), "--quiet", *options]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = graphprune(argv)
    if code != 0:
        return f"exit {code}: {stderr.getvalue().strip().splitlines()[-1]}"
    data = json.loads(report.read_text())
    stable = {key: value for key, value in data.items() if key not in _VOLATILE}
    if isinstance(stable.get("calibration"), dict):
        stable["calibration"].pop("execution_provider", None)
    if isinstance(stable.get("validation"), dict):
        stable["validation"].pop("execution_provider", None)
    model_hash = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    report_hash = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
    return f"model {model_hash} report {report_hash}"


def analysis_fingerprint(model: Path) -> str:
    """SHA-256 of `analyze --json`, without and with residual blocks."""
    digests = []
    for extra in ([], ["--blocks"]):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = graphprune(["analyze", str(model), "--json", *extra])
        if code != 0:
            return f"exit {code}: {stderr.getvalue().strip().splitlines()[-1]}"
        digests.append(hashlib.sha256(stdout.getvalue().encode()).hexdigest()[:16])
    return "analyze " + " blocks ".join(digests)


def cases(quick: bool, extra: bool = False, only: list[str] | None = None):
    names = ["resnet_tiny", "mobilenetv2", "densenet", "shufflenetv2"] if quick else list(ZOO)
    tx = ["bert", "llama"] if quick else list(transformers_zoo.TRANSFORMERS)
    if only is not None:  # a few models by name (zoo or transformers zoo), nothing else
        names, tx, extra = [n for n in ZOO if n in only], [n for n in tx if n in only], False
    for name in names:
        for exporter in EXPORTERS:
            for label, options in CNN_OPTIONS.items():
                yield f"{name}.{exporter}", label, lambda n=name, e=exporter: cached(n, e), options
    for name in tx:
        for exporter in transformers_zoo.TRANSFORMERS[name].exporters:
            for label, options in TRANSFORMER_OPTIONS.items():
                path = lambda n=name, e=exporter: transformers_zoo.cached(n, e)  # noqa: E731
                yield f"tx-{name}.{exporter}", label, path, options
    if extra:
        yield from extra_cases()


def extra_cases():
    """Fused transformers, mixture-of-experts exports and cached third-party files."""
    import fused_models  # tools/ (imports torch and onnxruntime's transformer optimizer)
    import thirdparty

    from models import moe_zoo

    for name in (n for n, e in fused_models.FUSED.items() if not e.cache):  # cache: own feeds
        for label, options in FUSED_OPTIONS.items():
            yield f"fused-{name}", label, lambda n=name: fused_models.cached(n), options
    for name, entry in moe_zoo.MOE.items():
        for exporter in entry.exporters:
            for label, options in MOE_OPTIONS.items():
                path = lambda n=name, e=exporter: moe_zoo.cached(n, e)  # noqa: E731
                yield f"moe-{name}.{exporter}", label, path, options
    for name in THIRDPARTY:
        entry = thirdparty.get(name)
        file = thirdparty.cache_dir() / f"{entry.package}-{entry.version}" / entry.filename
        if not file.is_file():
            continue
        dims = ",".join(str(d) for d in entry.input_shape)
        shape = ["--input-shape", f"{entry.input_name}={dims}"]
        yield f"thirdparty-{name}", "ratio", lambda f=file: f, ["--ratio", "0.3", *shape]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset")
    parser.add_argument("--extra", action="store_true", help="fused, MoE and third-party too")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these zoo models")
    args = parser.parse_args(argv)
    analyzed: set[str] = set()
    with tempfile.TemporaryDirectory() as folder:
        for model, label, path, options in cases(args.quick, args.extra, args.only):
            if model not in analyzed:
                analyzed.add(model)
                print(f"{model:40s} {'analyze':12s} {analysis_fingerprint(path())}", flush=True)
            print(f"{model:40s} {label:12s} {fingerprint(path(), options, Path(folder))}",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
