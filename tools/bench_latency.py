"""Latency benchmark: does removing MACs with graphprune buy the same wall-clock speedup?

For every zoo model (``models/zoo.py``) and exporter, the cached export is pruned at
``--ratio`` (L2 criterion, per-group ratio), and the script prints:

* MACs before and after (Conv, ConvTranspose, Gemm, MatMul; ``graphprune.metrics``) and the
  MAC ratio before/after;
* median onnxruntime latency of the original and the pruned model at batch 1 and batch 8,
  the speedup (before/after), and the speedup divided by the MAC ratio (1.0 = the latency
  fell exactly as much as the MACs did). The aim is a fraction of at least 0.85 on CPU.

Method. Both models of a pair get an onnxruntime session with the same options: CPU
provider (``--provider``), ``intra_op_num_threads=--threads`` (default 1, so results do
not depend on how many cores the machine has or on what else runs), one inter-op thread,
sequential execution, all graph optimizations. After 3 warm-up runs each, the two models
are timed alternately in one process (the same method as ``graphprune.validation.bench``,
with the order swapped every repeat), ``--repeats`` times; medians are reported.

Batch 8. The zoo is exported with a static batch of 1 and ``models.export`` has no batch
argument, so batch 8 is measured on a separate export of the same torch model (same seeded
weights) made here with ``torch.onnx.export(dynamo=False)`` at batch 8 into a temporary
directory, pruned the same way. With the default ``--batch8-exporter classic`` that export
is measured once per model and its numbers are shown on both exporter rows (marked ``*``
on the dynamo row); ``--batch8-exporter same`` exports batch 8 with each row's exporter.

Command (the one used for BENCHMARKS.md)::

    python tools/bench_latency.py                 # all models, both exporters, 50 repeats
    python tools/bench_latency.py --quick         # 5 models, classic only, 10 repeats
    python tools/bench_latency.py --models resnet18 vgg --exporter dynamo --threads 2
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.core.metrics import count_macs  # noqa: E402
from graphprune.runtime.inputs import input_shapes, random_inputs  # noqa: E402
from graphprune.runtime.latency import bench  # noqa: E402
from models.export import EXPORTERS, OPSET, cached, normalize  # noqa: E402
from models.zoo import ZOO, build  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
from benchkit import records  # noqa: E402

QUICK_MODELS = ["resnet18", "mobilenetv2", "yolov8", "unet", "vgg"]
BATCH = 8
WARMUP = 3
TARGET = 0.85


def machine_info(provider: str, threads: int) -> list[str]:
    return [
        records.environment_line(),
        f"onnxruntime providers available: {', '.join(ort.get_available_providers())}",
        f"provider: {provider}; intra_op_num_threads={threads}, inter_op_num_threads=1, "
        "sequential execution, ORT_ENABLE_ALL",
    ]


def export_batch(
    name: str, exporter: str, batch: int, folder: Path, size: int | None = None
) -> onnx.ModelProto:
    """Export zoo model `name` at `batch` (and input `size`), same weights as the cache."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model = build(name)
    shape = (batch, *ZOO[name].input_shape[1:])
    if size:
        shape = (*shape[:-2], size, size)
    args = (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=OPSET, external_data=False,
                input_names=["input"], output_names=["output"], verbose=False,
            )  # fmt: skip
            proto = program.model_proto
        else:
            path = folder / f"{name}.b{batch}.onnx"
            buffer = io.BytesIO()
            torch.onnx.export(
                model, args, buffer, dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["output"], do_constant_folding=True,
            )  # fmt: skip
            path.write_bytes(buffer.getvalue())
            proto = onnx.load(str(path))
    return normalize(proto)


def prune_and_time(model, ratio, repeats, provider, threads, round_to=1, seed=0) -> dict:
    model = gp.load(model)
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion="l2", round_to=round_to))
    pruned = gp.prune(analysis, plan)
    shapes = input_shapes(model)
    feeds = random_inputs(model, shapes, seed)
    macs_before, macs_after = count_macs(model, shapes), count_macs(pruned, shapes)
    timing = bench(model, pruned, feeds, repeats, provider, threads, WARMUP)
    before, after = timing["latency_ms_before"], timing["latency_ms_after"]
    return {
        "macs_before": macs_before, "macs_after": macs_after,
        "mac_ratio": macs_before / macs_after if macs_after else float("nan"),
        "before": before, "after": after, "speedup": before / after,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(ZOO), help="default: the whole zoo")
    parser.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument(
        "--round-to",
        type=int,
        default=1,
        help="kept channels per group: multiple of N (gp.plan round_to)",
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument(
        "--batch8-exporter",
        choices=["classic", "same"],
        default="classic",
        help="exporter of the batch-8 models (see the docstring)",
    )
    parser.add_argument("--no-batch8", action="store_true", help="batch 1 only")
    parser.add_argument(
        "--size", type=int, default=None,
        help="input height/width: re-export every model at this resolution (classic exporter)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)}; classic only; 10 repeats"
    )
    args = parser.parse_args(argv)
    names = args.models or (QUICK_MODELS if args.quick else list(ZOO))
    exporters = list(EXPORTERS) if args.exporter == "both" else [args.exporter]
    if (args.quick or args.size) and args.exporter == "both":
        exporters = ["classic"]
    repeats = 10 if args.quick and args.repeats == 50 else args.repeats

    print("command: python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]))
    for line in machine_info(args.provider, args.threads):
        print(line)
    print(
        f"ratio {args.ratio} (l2, per group, round_to {args.round_to}), median of {repeats} "
        f"alternated runs; batch 8 via {args.batch8_exporter} export "
        "(torch.onnx.export at batch 8)"
    )
    print()
    header = (
        f"{'model':<18} {'exporter':<8} {'MMACs':>8} {'->':>8} {'MACx':>5} | "
        f"{'b1 ms':>7} {'->':>7} {'spd':>5} {'frac':>5} | "
        f"{'b8 ms':>7} {'->':>7} {'spd':>5} {'frac':>5}"
    )
    print(header)
    print("-" * len(header))
    fractions: dict[str, list[float]] = {"b1": [], "b8": []}
    b8_cache: dict[tuple[str, str], dict] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for exporter in exporters:
                try:
                    source = (
                        export_batch(name, "classic", 1, Path(tmp), args.size)
                        if args.size
                        else cached(name, exporter)
                    )
                    r1 = prune_and_time(
                        source,
                        args.ratio,
                        repeats,
                        args.provider,
                        args.threads,
                        args.round_to,
                    )
                except Exception as error:  # report and go on with the other models
                    print(f"{name:<18} {exporter:<8} FAILED: {type(error).__name__}: {error}")
                    continue
                fractions["b1"].append(r1["speedup"] / r1["mac_ratio"])
                b8_text = ""
                if not args.no_batch8:
                    b8_exporter = exporter if args.batch8_exporter == "same" else "classic"
                    key = (name, b8_exporter)
                    reused = key in b8_cache
                    try:
                        if not reused:
                            proto = export_batch(name, b8_exporter, BATCH, Path(tmp), args.size)
                            b8_cache[key] = prune_and_time(
                                proto,
                                args.ratio,
                                repeats,
                                args.provider,
                                args.threads,
                                args.round_to,
                            )
                            r8 = b8_cache[key]
                            fractions["b8"].append(r8["speedup"] / r8["mac_ratio"])
                        r8 = b8_cache[key]
                        mark = "*" if b8_exporter != exporter else " "
                        b8_text = (
                            f"{r8['before']:7.3f} {r8['after']:7.3f} "
                            f"{r8['speedup']:5.2f} {r8['speedup'] / r8['mac_ratio']:5.2f}"
                            f"{mark}"
                        )
                    except Exception as error:
                        b8_text = f"FAILED: {type(error).__name__}: {str(error)[:60]}"
                print(
                    f"{name:<18} {exporter:<8} {r1['macs_before'] / 1e6:8.2f} "
                    f"{r1['macs_after'] / 1e6:8.2f} {r1['mac_ratio']:5.2f} | "
                    f"{r1['before']:7.3f} {r1['after']:7.3f} {r1['speedup']:5.2f} "
                    f"{r1['speedup'] / r1['mac_ratio']:5.2f} | {b8_text}",
                    flush=True,
                )
                r8 = None if args.no_batch8 else b8_cache.get((name, b8_exporter))
                records.emit({"model": name, "exporter": exporter, "batch1": r1, "batch8": r8})
    print("-" * len(header))
    print(
        "MACx = MACs before/after; spd = latency before/after; frac = spd / MACx "
        f"(aim >= {TARGET}); * = batch-8 numbers of the classic export"
    )
    every = fractions["b1"] + fractions["b8"]
    for key, values in (("batch 1", fractions["b1"]), ("batch 8", fractions["b8"]), ("all", every)):
        if values:
            met = sum(v >= TARGET for v in values)
            print(
                f"mean speedup/MAC-ratio, {key}: {np.mean(values):.3f} "
                f"(median {np.median(values):.3f}; {met}/{len(values)} at >= {TARGET})"
            )
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
