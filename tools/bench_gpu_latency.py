"""Latency targets as a GPU service sees them (issue 25), checked by timing code of its own.

For ResNet-50 and MobileNetV2 (torchvision, classic export, dynamic batch) and a BERT
(transformers config: 4 layers, hidden 512, 8 heads; classic export, dynamic batch and
sequence; output last_hidden_state), at each batch (images 224x224, sequences of 128):

* `graphprune profile` on the provider, its wall time;
* `graphprune prune --target-latency T --latency-table ...` (device timing, the default),
  its wall time, rounds, and the fraction graphprune says it reached;
* the fraction measured *independently*: the original and the written model timed here
  with onnxruntime IO binding (inputs and outputs in device memory, synchronised; this
  file's own code, none of graphprune's timing), alternated, median of paired ratios;
  also the original's end-to-end time (host arrays: the copies included);
* speed per MAC = (original / pruned latency) / (MACs before / after), for the target's
  model and for `--ratio` pruning (L2, the ratio bisected to the same MACs).

The models' weights are seeded random numbers (`fill`): the torch exports are stripped
of their weights (`--export DIR` writes such skeletons, a few hundred kB in all) and the
weights are drawn again when a model is read, so the same models run on a machine without
torchvision or transformers (a lent GPU machine: `--models-from DIR`).

Commands (BENCHMARKS.md, "Latency targets on a GPU, timed independently (issue 25)")::

    python tools/bench_gpu_latency.py --provider cpu --quick          # CPU, small sizes
    python tools/bench_gpu_latency.py --export .gpu/bench/models      # skeletons to carry
    python tools/bench_gpu_latency.py --provider cuda --models-from .gpu/bench/models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

MODELS = ("resnet50", "mobilenetv2", "bert")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FILLED = 64  # float initializers from this many elements on are dropped and drawn again


# --- models: exported once, stripped of weights, weights drawn again -------------------


def export(name: str, path: Path) -> None:
    """Export `name` with torch (torchvision through models/torchvision_cpu.py)."""
    import torch

    torch.manual_seed(0)
    if name == "bert":
        from models.torchvision_cpu import import_torchvision

        import_torchvision()  # transformers imports torchvision when it is installed
        from transformers import BertConfig, BertModel

        config = BertConfig(num_hidden_layers=4, hidden_size=512, num_attention_heads=8,
                            intermediate_size=2048)  # fmt: skip
        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = BertModel(config)

            def forward(self, input_ids, attention_mask):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

        ids = torch.randint(0, 1000, (2, 16))
        args, names = (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        net, outputs = Hidden().eval(), ["last_hidden_state"]
    else:
        from models.torchvision_cpu import import_torchvision

        tv = import_torchvision()
        build = {"resnet50": tv.models.resnet50, "mobilenetv2": tv.models.mobilenet_v2}[name]
        net, names, outputs = build(weights=None).eval(), ["input"], ["logits"]
        args = (torch.randn(1, 3, 224, 224),)
        axes = {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(net, args, str(path), input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the data of its larger float initializers (dims kept)."""
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and int(np.prod(tensor.dims)) >= FILLED:
            dims, name = list(tensor.dims), tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, onnx.TensorProto.FLOAT
            tensor.dims.extend(dims)
    return model


def fill(model: onnx.ModelProto) -> onnx.ModelProto:
    """Stripped initializers drawn again: normal, 1/sqrt(fan-in) (activations stay finite
    through 50 layers), seeded by the tensor's name."""
    for index, tensor in enumerate(model.graph.initializer):
        size = int(np.prod(tensor.dims))
        if tensor.data_type != onnx.TensorProto.FLOAT or size < FILLED or tensor.raw_data:
            continue
        rng = np.random.default_rng(zlib.crc32(tensor.name.encode()))
        fan_in = size // max(tensor.dims) if len(tensor.dims) > 1 else size
        data = (rng.standard_normal(tuple(tensor.dims)) / np.sqrt(fan_in)).astype(np.float32)
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(data, tensor.name))
    return model


def skeletons(folder: Path, names) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        path = folder / f"{name}.onnx"
        if not path.exists():
            full = folder / f"{name}.full.onnx"
            export(name, full)
            onnx.save(strip(onnx.load(full)), path)
            full.unlink()
        paths[name] = path
    return paths


def shapes_of(name: str, batch: int, image: int, sequence: int) -> dict[str, tuple[int, ...]]:
    if name == "bert":
        return {"input_ids": (batch, sequence), "attention_mask": (batch, sequence)}
    return {"input": (batch, 3, image, image)}


def feeds_of(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape in shapes.items():
        if name == "input_ids":
            feeds[name] = rng.integers(0, 1000, shape, dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# --- the independent timer: onnxruntime IO binding, nothing of graphprune ---------------


class Bound:
    """A session with its inputs in device memory and its outputs bound there."""

    def __init__(self, ort, model: bytes, feeds, provider: str, threads: int | None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:  # as a CPU service would: its threads, sleeping between requests
            options.intra_op_num_threads = threads
        # Two sessions alternated: one's threads spinning after its run would take the
        # cores from the other's timed run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider"
                                  else [])  # fmt: skip
        self.session = ort.InferenceSession(model, options, providers=providers)
        if self.session.get_providers()[0] != provider:
            raise SystemExit(f"{provider} did not load: {self.session.get_providers()}")
        device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
        self.feeds = feeds
        self.values = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds.items()}
        self.binding = self.session.io_binding()
        for key, value in self.values.items():
            self.binding.bind_ortvalue_input(key, value)
        for output in self.session.get_outputs():
            self.binding.bind_output(output.name, device, 0)

    def device_ms(self) -> float:
        started = time.perf_counter()
        self.binding.synchronize_inputs()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        return (time.perf_counter() - started) * 1000

    def host_ms(self) -> float:
        started = time.perf_counter()
        self.session.run(None, self.feeds)
        return (time.perf_counter() - started) * 1000


def paired(ort, original: bytes, pruned: bytes, feeds, provider: str, args) -> dict:
    """Both models alternated (order swapped every repeat) after warm-up: medians and the
    median of the paired ratios; the original's end-to-end time too."""
    a, b = (Bound(ort, m, feeds, provider, args.threads) for m in (original, pruned))
    repeats = args.repeats
    for _ in range(5):
        a.device_ms(), b.device_ms()
    times: list[list[float]] = [[], []]
    for repeat in range(repeats):
        for which, bound in ((0, a), (1, b)) if repeat % 2 == 0 else ((1, b), (0, a)):
            times[which].append(bound.device_ms())
    host = statistics.median(a.host_ms() for _ in range(max(repeats // 3, 3)))
    return {
        "original_ms": statistics.median(times[0]),
        "pruned_ms": statistics.median(times[1]),
        "fraction": statistics.median(y / x for x, y in zip(*times, strict=True)),
        "original_end_to_end_ms": host,
    }


# --- one model at one batch -------------------------------------------------------------


def measure(name, path: Path, shapes, args, folder: Path) -> dict:
    import onnxruntime as ort

    import graphprune as gp
    from graphprune.cli import main as graphprune_main
    from graphprune.core.metrics import count_macs

    model = fill(onnx.load(path))
    source = folder / f"{name}.onnx"
    onnx.save(model, source)
    shape_args = [f"{k}={','.join(map(str, v))}" for k, v in shapes.items()]
    common = ["--provider", args.provider, "--input-shape", *shape_args]
    if args.threads:
        common += ["--threads", str(args.threads)]
    table, out, report = folder / "table.json", folder / "out.onnx", folder / "report.json"
    started = time.perf_counter()
    if graphprune_main(["profile", str(source), "-o", str(table), *common]) != 0:
        raise SystemExit(f"{name}: graphprune profile failed (its error is above)")
    profile_s = time.perf_counter() - started
    started = time.perf_counter()
    if graphprune_main([
        "prune", str(source), "-o", str(out), "--target-latency", str(args.target),
        "--latency-table", str(table), "--report", str(report), "--quiet", *common,
    ]) != 0:  # fmt: skip
        raise SystemExit(f"{name}: graphprune prune failed (its error is above)")
    loop_s = time.perf_counter() - started
    latency = json.loads(report.read_text())["latency"]
    pruned = onnx.load(out)
    feeds = feeds_of(shapes)
    provider = PROVIDERS[args.provider]
    original_bytes = model.SerializeToString()
    timed = paired(ort, original_bytes, pruned.SerializeToString(), feeds, provider, args)
    macs_before, macs_after = count_macs(model, shapes), count_macs(pruned, shapes)
    # --ratio at the same MACs: bisection on the ratio (MACs are exact, no timing).
    analysis = gp.analyze(model)
    low, high, best = 0.0, 0.95, None
    for _ in range(10):
        ratio = (low + high) / 2
        uniform = gp.prune(analysis, gp.plan(analysis, gp.PlanOptions(ratio=ratio)))
        macs = count_macs(uniform, shapes)
        if best is None or abs(macs - macs_after) < abs(best[1] - macs_after):
            best = (uniform, macs, ratio)
        low, high = (ratio, high) if macs > macs_after else (low, ratio)
    uniform, uniform_macs, ratio = best
    timed_uniform = paired(ort, original_bytes, uniform.SerializeToString(), feeds, provider, args)
    return {
        "model": name,
        "batch": next(iter(shapes.values()))[0],
        "target": args.target,
        "graphprune_fraction": latency["measured_fraction"],
        "independent_fraction": round(timed["fraction"], 3),
        "within_5pct": abs(timed["fraction"] / args.target - 1) <= 0.05,
        "rounds": len(latency["attempts"]),
        "profile_s": round(profile_s, 1),
        "loop_s": round(loop_s, 1),
        "original_ms": round(timed["original_ms"], 3),
        "end_to_end_ms": round(timed["original_end_to_end_ms"], 3),
        "macs_kept": round(macs_after / macs_before, 3),
        "spd_per_mac": round((1 / timed["fraction"]) / (macs_before / macs_after), 2),
        "ratio": round(ratio, 3),
        "ratio_macs_kept": round(uniform_macs / macs_before, 3),
        "ratio_spd_per_mac": round(
            (1 / timed_uniform["fraction"]) / (macs_before / uniform_macs), 2
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=40, help="alternated timing rounds")
    parser.add_argument("--threads", type=int, help="intra-op threads (CPU provider)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a CPU: batch 2 (--batches), images 64x64, "
                        "sequences of 16, 10 timing rounds")  # fmt: skip
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="only write the weightless models here (to carry to a GPU)")
    parser.add_argument("--models-from", type=Path, metavar="DIR",
                        help="read the weightless models from here (no torch export)")
    args = parser.parse_args()
    image, sequence = (64, 16) if args.quick else (224, 128)
    if args.quick:
        args.repeats = min(args.repeats, 10)
        if args.batches == [64, 1]:
            args.batches = [2]
    if args.export is not None:
        paths = skeletons(args.export, args.models)
        size = sum(p.stat().st_size for p in paths.values())
        print(f"wrote {len(paths)} weightless models to {args.export} ({size / 2**20:.2f} MiB)")
        return 0
    from benchkit import records
    from benchkit.tables import markdown

    if args.provider == "cuda":
        with contextlib.suppress(ImportError):  # torch first: it loads CUDA's libraries
            import torch  # noqa: F401

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-latency-") as tmp:
        models = Path(tmp) / "models" if args.models_from is None else args.models_from
        paths = skeletons(models, args.models) if args.models_from is None else {
            name: models / f"{name}.onnx" for name in args.models}  # fmt: skip
        for name in args.models:
            for batch in args.batches:
                started = time.perf_counter()
                folder = Path(tmp) / f"{name}-{batch}"
                folder.mkdir()
                shapes = shapes_of(name, batch, image, sequence)
                row = measure(name, paths[name], shapes, args, folder)
                row["wall_s"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(row, flush=True)
    print(f"\nprovider {args.provider}, target {args.target}, images {image}x{image}, "
          f"sequences {sequence}; fractions of the original's device latency")  # fmt: skip
    print(markdown(rows))
    for row in rows:
        records.emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
