"""The recovery loop: distil the pruned model (the student, lowered onto torch) towards
the dense one (the teacher, run once in onnxruntime and cached) on the user's samples.

    result = finetune(pruned, original, TrainingData(path="calib/"), FinetuneOptions(steps=500))
    save(result.model, "recovered.onnx")

Deterministic: the same models, data, options and seed give the same bytes (torch's
deterministic algorithms, a fixed thread count, batches drawn from the seed and the step
alone), and a run resumed from a checkpoint ends where the uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from ..errors import GraphpruneError
from ..posttrain.batching import relax_batch, static_batch
from ..runtime.sessions import execution_provider, run, session
from ..runtime.validation import deviation
from .checkpoints import load_latest
from .checkpoints import save as save_checkpoint
from .data import TrainingData, sources
from .dtypes import to_tensor
from .losses import learning_rate, objective
from .lowering import LoweredModel, check_supported, feeds_to_torch
from .options import FinetuneOptions
from .teacher import build_cache, feature_points, model_digest
from .writeback import write_weights

EVAL_BATCHES = 8  # the fixed batches the loss before and after is measured on


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    report: dict = field(default_factory=dict)


def finetune(
    student: onnx.ModelProto, teacher: onnx.ModelProto, data: TrainingData,
    options: FinetuneOptions,
) -> FinetuneResult:  # fmt: skip
    """Distil `student` towards `teacher` on `data`; the student with trained weights."""
    check_supported(student)
    _check_interface(student, teacher)
    with _deterministic(options) as device, _folder(options.cache_dir) as folder:
        return _train(student, teacher, data, options, device, folder)


def _train(student, teacher, data, options, device, folder) -> FinetuneResult:
    started = time.perf_counter()
    first = next(sources(teacher, data, options.batch))
    sample = {name: first.arrays[name][:1] for name in _inputs(teacher)}
    features = feature_points(student, teacher, sample) if options.features else []
    del first
    cache, size, note = build_cache(teacher, data, features=features, batch=options.batch,
                                    folder=folder, progress=options.progress)  # fmt: skip
    teacher_s = time.perf_counter() - started
    model = LoweredModel(student, options.trainable).to(device)
    params = list(model.parameters())
    if not params:
        raise GraphpruneError("the pruned model has no weights that can train")
    outputs = [o.name for o in student.graph.output]
    names = outputs + features
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    per_epoch = sum(math.ceil(c / size) for c in cache.counts)
    total = options.steps or max(1, math.ceil((options.epochs or 1.0) * per_epoch))
    plans: dict[int, list] = {}

    def batch_at(step: int):
        epoch = step // per_epoch
        if epoch not in plans:
            plans.clear()
            plans[epoch] = _epoch(cache.counts, size, options.seed, epoch)
        file, rows = plans[epoch][step % per_epoch]
        return cache.rows(file, rows)

    def terms(values: dict[str, np.ndarray]):
        feeds = feeds_to_torch({n: values[n] for n in cache.inputs}, device)
        got = model(feeds, names)
        want = [to_tensor(values[n]).to(device) for n in names]
        keep = [i for i, (g, w) in enumerate(zip(got, want, strict=True))
                if g.is_floating_point() and g.shape == w.shape]  # fmt: skip
        kept_outputs = sum(1 for i in keep if i < len(outputs))
        labels = torch.from_numpy(values[cache.labels]).to(device) if cache.labels else None
        return objective(
            [got[i] for i in keep], [want[i] for i in keep], outputs=kept_outputs,
            kind=options.loss, temperature=options.temperature,
            feature_weight=options.feature_weight, labels=labels,
            label_weight=options.label_weight,
        )  # fmt: skip

    evaluation = [batch_at(s) for s in range(min(EVAL_BATCHES, per_epoch))]

    def evaluate() -> dict:
        with torch.no_grad():
            parts = [terms(v) for v in evaluation]
        return {key: round(float(np.mean([getattr(p, key) if key != "total" else float(p.total)
                                          for p in parts])), 6)
                for key in ("total", "outputs", "features", "labels")}  # fmt: skip

    before = evaluate()
    deviation_before = _deviation(student, evaluation[0], cache.inputs, outputs)
    key = _run_key(student, teacher, data, options, total)
    folder_ck = Path(options.checkpoint_dir) if options.checkpoint_dir else None
    start = load_latest(folder_ck, key, params, optimizer) if options.resume else 0
    trained_at = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="finetune", unit="step",
               disable=not options.progress, leave=False)  # fmt: skip
    last = None
    for step in range(start, total):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, options.lr, options.schedule, options.warmup)
        optimizer.zero_grad(set_to_none=True)
        last = terms(batch_at(step))
        if not torch.isfinite(last.total):
            raise GraphpruneError(f"the loss is not finite at step {step}: lower --lr")
        last.total.backward()
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(last.total.detach()):.4g}")
        done = step + 1
        if folder_ck is not None and (done % options.checkpoint_every == 0 or done == total):
            save_checkpoint(folder_ck, key, done, params, optimizer)
    bar.close()
    train_s = time.perf_counter() - trained_at
    after = evaluate()
    trained = write_weights(student, model.trained_arrays())
    steps_run = total - start
    report = {
        "data": data.describe(),
        "samples": int(sum(cache.counts)),
        "steps": total,
        "resumed_at": start,
        "batch": size,
        "epochs": round(total / per_epoch, 3),
        "device": str(device),
        "teacher_provider": execution_provider(),
        "trained_tensors": len(model.weights),
        "trained_values": int(sum(p.numel() for p in params)),
        "features": features,
        "loss_before": before,
        "loss_after": after,
        "deviation_before": deviation_before,
        "deviation_after": _deviation(trained, evaluation[0], cache.inputs, outputs),
        "teacher_s": round(teacher_s, 3),
        "train_s": round(train_s, 3),
        "steps_per_s": round(steps_run / train_s, 3) if train_s > 0 and steps_run else None,
        "peak_memory_mb": _peak_memory_mb(device),
        "options": {k: v for k, v in asdict(options).items() if k not in ("progress",)},
    }
    if note:
        report["note"] = note
    return FinetuneResult(trained, report)


def _epoch(counts: list[int], size: int, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """The batches of one epoch: each file's samples shuffled and cut into batches, then
    all batches shuffled (a batch never mixes files: their shapes may differ)."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for file, count in enumerate(counts):
        order = rng.permutation(count)
        batches += [(file, order[i : i + size]) for i in range(0, count, size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _deviation(model: onnx.ModelProto, values: dict, inputs: list[str], outputs: list[str]):
    """The largest relative deviation of `model`'s outputs (in onnxruntime) from the
    teacher's cached ones on one batch: what `prune` reports, and proof the model runs."""
    feeds = {n: values[n] for n in inputs}
    rows = next(iter(feeds.values())).shape[0]
    if static_batch(model) not in (None, rows):  # a declared batch of 1 that runs batches
        model = relax_batch(model)
    got = run(session(model), feeds)
    worst = 0.0
    for name, value in zip(outputs, got, strict=True):
        if value.shape == values[name].shape:
            worst = max(worst, deviation(values[name], value)["max_rel"] or 0.0)
    return round(worst, 6)


def _check_interface(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    if sorted(_inputs(student)) != sorted(_inputs(teacher)):
        raise GraphpruneError(
            f"the pruned model's inputs ({', '.join(_inputs(student))}) are not the "
            f"teacher's ({', '.join(_inputs(teacher))}): give the model it was pruned from"
        )
    if [o.name for o in student.graph.output] != [o.name for o in teacher.graph.output]:
        raise GraphpruneError("the pruned model's outputs are not the teacher's: give the "
                              "model it was pruned from")  # fmt: skip


def _inputs(model: onnx.ModelProto) -> list[str]:
    stored = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in stored]


def _run_key(student, teacher, data, options: FinetuneOptions, total: int) -> str:
    """What a checkpoint must match to resume: everything that shapes the trajectory."""
    shaping = {k: v for k, v in asdict(options).items()
               if k not in ("steps", "epochs", "checkpoint_dir", "checkpoint_every", "resume",
                            "cache_dir", "progress")}  # fmt: skip
    from .data import fingerprint

    text = json.dumps([model_digest(student), model_digest(teacher), fingerprint(data),
                       shaping, total], sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


@contextlib.contextmanager
def _deterministic(options: FinetuneOptions):
    """Seeded, deterministic torch on the chosen device; torch's global settings as they
    were afterwards."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise GraphpruneError("--device cuda: torch sees no CUDA device (a CPU build of torch?)")
    cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    # CUDA lacks deterministic kernels for some backward passes (index_add): warn there.
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    try:
        yield device
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextlib.contextmanager
def _folder(given: str | None):
    if given is not None:
        path = Path(given)
        if path.exists() and not path.is_dir():
            raise GraphpruneError(f"--cache-dir {given} is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="graphprune-teacher-") as temp:
        yield Path(temp)
