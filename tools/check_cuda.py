"""CUDA check: graphprune on the CUDA execution provider, for a machine with a GPU.

Exports zoo models with the classic torch exporter at batch 1 and 8, prunes them at 50%,
checks that validation really ran on CUDAExecutionProvider, that the pruned model matches
the masking oracle on the GPU, and times both models alternately in one process.

    python tools/check_cuda.py [--models resnet18 yolov8 ...] [--repeats 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_latency import export_batch  # tools/ is on the path when run as a script

import graphprune as gp
from graphprune.core.metrics import count_macs
from graphprune.runtime.latency import bench
from graphprune.runtime.sessions import execution_provider, run, session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet18", "mobilenetv2", "yolov8", "unet", "vgg"]
    )
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=None, help="input height and width")
    args = parser.parse_args()
    provider = execution_provider()
    print(f"provider: {provider}; torch {torch.__version__}; cuda {torch.cuda.is_available()}")
    print(
        f"{'model':14} {'batch':>5} {'MACs x':>7} {'before ms':>10} {'after ms':>9} "
        f"{'speedup':>8} {'oracle':>9}"
    )
    folder = tempfile.mkdtemp(prefix="graphprune-cuda-")
    for name in args.models:
        for batch in args.batches:
            model = gp.load(export_batch(name, "classic", batch, Path(folder), args.size))
            analysis = gp.analyze(model)
            plan = gp.plan(analysis, 0.5)
            pruned = gp.prune(analysis, plan)
            rng = np.random.default_rng(0)
            shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
            feeds = {"input": rng.standard_normal(shape, dtype=np.float32)}
            masked_out = run(session(gp.mask(analysis, plan), provider), feeds)
            pruned_out = run(session(pruned, provider), feeds)
            oracle = max(
                float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-2))
                for a, b in zip(masked_out, pruned_out, strict=True)
            )
            shapes = {"input": feeds["input"].shape}
            macs = count_macs(model, shapes) / count_macs(pruned, shapes)
            timing = bench(model, pruned, feeds, repeats=args.repeats)
            print(
                f"{name:14} {batch:>5} {macs:>7.2f} {timing['latency_ms_before']:>10.3f} "
                f"{timing['latency_ms_after']:>9.3f} {timing['speedup']:>8.2f} {oracle:>9.1e}"
            )
    return 0 if provider == "CUDAExecutionProvider" else 1


if __name__ == "__main__":
    sys.exit(main())
