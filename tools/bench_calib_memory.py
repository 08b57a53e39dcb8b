"""Calibration memory does not grow with the number of samples.

Calibrates the README's example model (resnet_tiny, 3x32x32 inputs) with least-squares
statistics (per-channel moments plus X^T X of every consumer's im2col patches) on N and on
10 N samples, each run in a fresh process, reading a directory of NPZ files of 256 samples
each, and reports each process's peak RSS (ru_maxrss) before and after calibration. Kept
activations would add about 0.4 MB per sample here (the consumer inputs of one sample).

Run: python tools/bench_calib_memory.py [--samples 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"
PER_FILE = 256


def child(folder: str, batch: int) -> None:
    import graphprune as gp
    from graphprune.posttrain.statistics import collect

    model = gp.load(EXAMPLE)
    analysis = gp.analyze(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    stats = collect(analysis, gp.CalibrationData(path=folder), batch=batch, scatter=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats_mb = (
        sum(
            m.mean.nbytes + m.m2.nbytes + (0 if m.scatter is None else m.scatter.nbytes)
            for m in stats.moments.values()
        )
        / 2**20
    )
    print(json.dumps({"samples": stats.samples, "rss_before_mb": before / 1024,
                      "rss_peak_mb": peak / 1024, "stats_mb": stats_mb,
                      "seconds": seconds}))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch)
        return 0
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (args.samples, 10 * args.samples):
            folder = Path(tmp) / f"n{count}"
            folder.mkdir()
            for index, start in enumerate(range(0, count, PER_FILE)):
                size = min(PER_FILE, count - start)
                image = rng.standard_normal((size, 3, 32, 32)).astype(np.float32)
                np.savez(folder / f"part{index:04d}.npz", input=image)
            command = [sys.executable, __file__, "--child", str(folder), "--batch", str(args.batch)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"resnet_tiny, lsq statistics (moments + patch X^T X), batch {args.batch}, "
          f"{PER_FILE} samples per NPZ file")  # fmt: skip
    header = ("samples", "RSS before", "peak RSS", "growth", "stats", "time")
    print("{:>8} {:>11} {:>9} {:>7} {:>7} {:>6}".format(*header))
    for row in rows:
        growth = row["rss_peak_mb"] - row["rss_before_mb"]
        print(f"{row['samples']:>8} {row['rss_before_mb']:>9.0f}MB {row['rss_peak_mb']:>7.0f}MB "
              f"{growth:>5.0f}MB {row['stats_mb']:>5.1f}MB {row['seconds']:>5.1f}s")  # fmt: skip
    ratio = rows[1]["rss_peak_mb"] / rows[0]["rss_peak_mb"]
    print(f"peak RSS ratio at 10x samples: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
