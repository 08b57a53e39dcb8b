"""Fingerprints of graphprune's outputs on the zoo: one line per (model, options) with the
SHA-256 of the pruned model and of the report's deterministic part.

Run it before and after a change that must not change behaviour (a refactor) and diff
the two files: any line that differs is a changed plan or a changed model byte.

    python tools/fingerprint.py > before.txt      # at the old commit
    python tools/fingerprint.py > after.txt       # at the new one
    diff before.txt after.txt

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
}  # fmt: skip
TRANSFORMER_OPTIONS = {
    "ratio": ["--ratio", "0.3"],
    "heads": ["--ratio", "0.25", "--only", "heads", "--only", "mlp", "--head-ratio", "0.5"],
    "wanda-bias": ["--target-params", "0.8", "--criterion", "wanda", "--compensate", "bias",
                   "--calib-random", "4"],
}  # fmt: skip
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


def cases(quick: bool):
    names = ["resnet_tiny", "mobilenetv2", "densenet", "shufflenetv2"] if quick else list(ZOO)
    for name in names:
        for exporter in EXPORTERS:
            for label, options in CNN_OPTIONS.items():
                yield f"{name}.{exporter}", label, lambda n=name, e=exporter: cached(n, e), options
    tx = ["bert", "llama"] if quick else list(transformers_zoo.TRANSFORMERS)
    for name in tx:
        for exporter in transformers_zoo.TRANSFORMERS[name].exporters:
            for label, options in TRANSFORMER_OPTIONS.items():
                path = lambda n=name, e=exporter: transformers_zoo.cached(n, e)  # noqa: E731
                yield f"tx-{name}.{exporter}", label, path, options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for model, label, path, options in cases(args.quick):
            print(f"{model:40s} {label:12s} {fingerprint(path(), options, Path(folder))}",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
