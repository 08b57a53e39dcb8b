"""What recovery costs by model size: steps/s and peak memory of `graphprune finetune`.

Each model is pruned by half (`graphprune prune --ratio 0.5`, L2, no calibration) and
distilled towards the original for `--steps` steps of its batch of seeded random samples
(`--data-random`), one torch thread, through the command line, each in a process of its
own so that peak memory (the process's maximum resident set: onnxruntime's teacher, the
lowered student, its gradients and AdamW's two moments) is that model's alone. Models:
the zoo's ResNet-tiny, ResNet-18 and VGG (classic exports, their 3x32x32 and 3x64x64
random images, batch 32), and LLaMA-shaped language models of `tools/make_llm.py` at three
sizes (batches of 8 sequences of 64 tokens).

    python tools/bench_recovery_cost.py
    python tools/bench_recovery_cost.py --only resnet18 --steps 5    # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import onnx  # noqa: E402

# name -> (source, input shape for the random samples without the batch, batch)
# LLaMA sizes as make_llm.py flags: hidden, layers, heads, kv-heads, intermediate, vocab.
LLMS = {
    "llama-9M": (256, 4, 4, 4, 704, 8000),
    "llama-35M": (512, 8, 8, 8, 1408, 8000),
    "llama-130M": (1024, 8, 16, 16, 2816, 16000),
}
MODELS = {"resnet_tiny": ("input", (3, 32, 32), 32), "resnet18": ("input", (3, 64, 64), 32),
          "vgg": ("input", (3, 64, 64), 32)}  # fmt: skip
MODELS.update({name: ("input_ids", (64,), 8) for name in LLMS})


def source(name: str, folder: Path) -> Path:
    if name in LLMS:
        flags = dict(zip(("hidden", "layers", "heads", "kv-heads", "intermediate", "vocab"),
                         LLMS[name], strict=True))  # fmt: skip
        args = [f"--{k}={v}" for k, v in flags.items()]
        subprocess.run([sys.executable, str(REPO / "tools" / "make_llm.py"), *args, "--out",
                        str(folder / name)], check=True, capture_output=True)  # fmt: skip
        return folder / name / "llama.onnx"
    from models.export import cached

    return Path(cached(name, "classic"))


def graphprune(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "graphprune", *args], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"graphprune {args[0]} failed: {done.stderr.strip()[-500:]}")


def measure(name: str, folder: Path, steps: int) -> dict:
    model = source(name, folder)
    params = sum(
        int(onnx.numpy_helper.to_array(t).size)
        for t in onnx.load(model, load_external_data=True).graph.initializer
    )
    pruned, out, report = folder / f"{name}.pruned.onnx", folder / f"{name}.out.onnx", \
        folder / f"{name}.json"  # fmt: skip
    graphprune("prune", str(model), "-o", str(pruned), "--ratio", "0.5", "--no-validate")
    input_name, shape, batch = MODELS[name]
    started = time.perf_counter()
    graphprune("finetune", str(pruned), "-o", str(out), "--teacher", str(model),
               "--data-random", str(4 * batch), "--input-shape",
               f"{input_name}={','.join(map(str, (1, *shape)))}", "--steps", str(steps),
               "--batch", str(batch), "--threads", "1", "--report", str(report))  # fmt: skip
    wall = time.perf_counter() - started
    got = json.loads(report.read_text())
    return {"model": name, "params_m": params / 1e6, "trained_m": got["trained_values"] / 1e6,
            "batch": batch, "steps_per_s": got["steps_per_s"], "teacher_s": got["teacher_s"],
            "peak_mb": got["peak_memory_mb"], "wall_s": wall}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print("params: the dense model's; trained: the pruned model's weights that train")
    print(f"{'model':<12} {'params M':>8} {'trained M':>9} {'batch':>5} {'steps/s':>8} "
          f"{'teacher s':>9} {'peak MB':>8} {'wall s':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            r = measure(name, Path(tmp), args.steps)
            print(f"{r['model']:<12} {r['params_m']:>8.1f} {r['trained_m']:>9.1f} "
                  f"{r['batch']:>5} {r['steps_per_s']:>8.3f} {r['teacher_s']:>9.1f} "
                  f"{r['peak_mb']:>8.0f} {r['wall_s']:>7.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
