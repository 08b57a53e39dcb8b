"""Dynamic quantization (issue 23): what pruning the quantized model costs.

Each float export F (the zoo's ResNet-18, MobileNetV2, EfficientNet, RegNet and
torchvision's resnet18, mobilenet_v2, efficientnet_b0, regnet_y_400mf at 224x224, both
torch exporters; BERT and LLaMA (grouped-query attention) from configs; the pretrained
all-MiniLM-L6-v2; a CNN trained on scikit-learn's digits) is quantized with onnxruntime's
``quantize_dynamic`` into Q (DynamicQuantizeLinear + ConvInteger/MatMulInteger). Then:

* PQ: graphprune prunes Q at ``--ratio`` (L2 on the dequantized weights) with
  ``approximate_dynamic_quant`` (``--approximate-dynamic-quant``): the kept channels are
  requantized on their own range;
* PF: the same channels removed from F (the groups of F and Q correspond one to one; the
  table says when they do not and F was planned by itself);
* QPF: PF quantized again with ``quantize_dynamic`` -- prune-then-quantize, what a user
  with the float model would ship.

Reported: the groups that prune without the option (`default`) and with it; parameters
removed from Q; the oracle (PQ against ``gp.mask``, where the removed
channels are zero at each quantizer's input: largest absolute difference); the mean
output cosine of PQ and of QPF against the dense quantized model Q and against PF (the
float model both approximate), and of PQ against QPF; Q against F for scale (printed
as 1 - cosine). Classifier
outputs are compared per sample, transformer outputs per token (MiniLM: mean-pooled per
sentence, on real sentences); the digits CNN also reports test accuracy. Random inputs
are seeded. Command::

    python tools/bench_dynquant.py                      # everything, --ratio 0.5
    python tools/bench_dynquant.py --models resnet18 bert --ratio 0.3
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from benchkit.models import feeds as random_feeds  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.planning.plan import GroupChoice, Plan  # noqa: E402
from graphprune.runtime.sessions import run, session  # noqa: E402

ZOO = ("resnet18", "mobilenetv2", "efficientnet", "regnet")
TORCHVISION = ("tv-resnet18", "tv-mobilenet_v2", "tv-efficientnet_b0", "tv-regnet_y_400mf")
TEXT = ("bert", "llama", "minilm")
EXPORTERS = ("classic", "dynamo")
SAMPLES = 8  # random inputs per model


@dataclass
class Case:
    name: str
    source: Path  # the float export
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None  # test labels: accuracy (digits)
    pooled: bool = False  # mean-pool the hidden states per sequence (MiniLM sentences)


def quantize(source: Path, out: Path) -> onnx.ModelProto:
    """``quantize_dynamic`` of `source`; its shape inference refuses the dynamo exporter's
    value_info (a MatMul's recorded shape), which is only a hint, so that goes first."""
    from onnxruntime.quantization import quantize_dynamic

    model = onnx.load(source)
    del model.graph.value_info[:]
    plain = out.with_suffix(".float.onnx")
    onnx.save(model, plain)
    quantize_dynamic(str(plain), str(out))
    return onnx.load(out)


def vectors(model: onnx.ModelProto, case: Case) -> np.ndarray:
    """One row per sample (classifiers), token or pooled sentence (transformers)."""
    sess, rows = session(model, "CPUExecutionProvider"), []
    for feeds in case.feeds:
        out = run(sess, feeds)[0].astype(np.float64)
        if case.pooled:
            out = out.mean(axis=1)
        rows.append(out.reshape(-1, out.shape[-1]) if out.ndim == 3 else out.reshape(len(out), -1))
    return np.concatenate(rows)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / np.maximum(norms, 1e-12)))


def same_channels(float_analysis, analysis, plan: Plan) -> Plan | None:
    """`plan`'s choices on the float model's analysis, when its groups correspond one to
    one: the same sources (the quantizer renames a layer X to X_quant, a Gemm to
    X_MatMul_quant, and may list them in another order)."""

    def shape(a):
        def sources(group):
            return sorted(s.removesuffix("_quant").removesuffix("_MatMul") for s in group.sources)

        return [(g.channels, g.kind, g.prunable and sources(g)) for g in a.groups]

    if shape(float_analysis) != shape(analysis):
        return None
    choices = [GroupChoice(c.group, c.removed, c.kept) for c in plan.choices]
    classes = [float_analysis.groups[c.group].classes[c.removed] for c in choices]
    removed = np.sort(np.concatenate(classes)) if classes else np.zeros(0, np.int64)
    return Plan(choices, removed)


def params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def row(case: Case, ratio: float, scratch: Path) -> dict:
    float_model = gp.load(str(case.source))
    quantized = gp.load(quantize(case.source, scratch / f"{case.name}.q.onnx"))
    default = gp.analyze(quantized)  # without the option
    analysis = gp.analyze(quantized, approximate_dynamic_quant=True)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion="l2"))
    pq = gp.prune(analysis, plan)
    oracle = max(
        float(np.abs(a - b).max())
        for feeds in case.feeds
        for a, b in zip(
            run(session(gp.mask(analysis, plan), "CPUExecutionProvider"), feeds),
            run(session(pq, "CPUExecutionProvider"), feeds),
            strict=True,
        )
    )
    float_analysis = gp.analyze(float_model)
    float_plan = same_channels(float_analysis, analysis, plan)
    same = float_plan is not None
    if float_plan is None:
        float_plan = gp.plan(float_analysis, gp.PlanOptions(ratio=ratio, criterion="l2"))
    pf = gp.prune(float_analysis, float_plan)
    pf_path = scratch / f"{case.name}.pf.onnx"
    onnx.save(pf, pf_path)
    qpf = quantize(pf_path, scratch / f"{case.name}.qpf.onnx")
    models = {"F": float_model, "Q": quantized, "PF": pf, "PQ": pq, "QPF": qpf}
    out = {name: vectors(model, case) for name, model in models.items()}
    result = {
        "groups": f"{len(analysis.prunable_groups)}/{len(analysis.groups)}",
        "default": len(default.prunable_groups),
        "params": 1 - params(pq) / params(quantized),
        "oracle": oracle,
        "same": same,
        "Q~F": cosine(out["Q"], out["F"]),
        "PQ~Q": cosine(out["PQ"], out["Q"]),
        "QPF~Q": cosine(out["QPF"], out["Q"]),
        "PQ~PF": cosine(out["PQ"], out["PF"]),
        "QPF~PF": cosine(out["QPF"], out["PF"]),
        "PQ~QPF": cosine(out["PQ"], out["QPF"]),
    }
    if case.labels is not None:
        result["accuracy"] = {m: float((v.argmax(1) == case.labels).mean()) for m, v in out.items()}
    return result


def zoo_cases(names: list[str], exporters: list[str]) -> list[Case]:
    from models.export import cached

    cases = []
    for name in names:
        for exporter in exporters:
            path = cached(name, exporter)
            model = onnx.load(path)
            feeds = [random_feeds(model, seed=s) for s in range(SAMPLES)]
            cases.append(Case(f"{name}.{exporter}", path, feeds))
    return cases


def torchvision_cases(names: list[str], exporters: list[str], folder: Path) -> list[Case]:
    """torchvision's own architectures (random weights) at 1x3x224x224."""
    import torch

    from models.export import OPSET, normalize
    from models.torchvision_cpu import import_torchvision

    torchvision = import_torchvision()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    cases = []
    for name in names:
        torch.manual_seed(0)
        module = getattr(torchvision.models, name.removeprefix("tv-"))(weights=None)
        _set_batchnorm_statistics(module, torch)
        example = (torch.randn(1, 3, 224, 224),)
        for exporter in exporters:
            path = folder / f"{name}.{exporter}.onnx"
            with torch.no_grad():
                if exporter == "dynamo":
                    program = torch.onnx.export(
                        module, example, dynamo=True, opset_version=OPSET, verbose=False,
                        input_names=["input"], external_data=False,
                    )  # fmt: skip
                    onnx.save(normalize(program.model_proto), path)
                else:
                    torch.onnx.export(module, example, str(path), dynamo=False,
                                      opset_version=OPSET, input_names=["input"])  # fmt: skip
            model = onnx.load(path)
            feeds = [random_feeds(model, seed=s) for s in range(SAMPLES)]
            cases.append(Case(f"{name}.{exporter}", path, feeds))
    return cases


def _set_batchnorm_statistics(module, torch) -> None:
    """Freshly initialised, every BatchNorm has mean 0 and variance 1, and the outputs of
    torchvision's MobileNetV2 and EfficientNet-B0 on random images vanish (~1e-7, all
    rounding); their statistics from one batch of random images make every layer carry
    signal. Leaves the module in eval mode."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # the cumulative average: this batch's statistics
    module.train()
    with torch.no_grad():
        module(torch.randn(8, 3, 224, 224))
    module.eval()


def text_cases(names: list[str], exporters: list[str]) -> list[Case]:
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    from models.transformers_zoo import TRANSFORMERS, cached

    cases = []
    for name in names:
        for exporter in [e for e in exporters if e in TRANSFORMERS[name].exporters]:
            path = cached(name, exporter)
            if name == "minilm":
                cases.append(Case(f"{name}.{exporter}", path, minilm_feeds(), pooled=True))
                continue
            model = onnx.load(path)
            # Batch 1: the dynamo LLaMA export (from an example of batch 1) runs only so.
            feeds = [random_feeds(model, seed=s) for s in range(SAMPLES)]
            cases.append(Case(f"{name}.{exporter}", path, feeds))
    return cases


def minilm_feeds() -> list[dict[str, np.ndarray]]:
    """Real sentences (tools/bench_posttrain_minilm.py's), tokenized, one batch per length
    (the zoo's MiniLM export takes token ids only, no attention mask)."""
    from bench_posttrain_minilm import model_dir, sentences
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    by_length: dict[int, list[list[int]]] = {}
    for text in sentences(3, 96):
        ids = tokenizer(text)["input_ids"]
        by_length.setdefault(len(ids), []).append(ids)
    return [{"input": np.asarray(rows, np.int64)} for _, rows in sorted(by_length.items())]


def digits_cases(exporters: list[str], folder: Path) -> list[Case]:
    """The digits CNN of tools/bench_posttrain_digits.py, trained (seconds), its test set."""
    import torch
    from bench_posttrain_digits import data, train

    x_train, x_test, y_train, y_test = data()
    model = train(x_train, y_train)
    cases = []
    for exporter in exporters:
        path = folder / f"digits.{exporter}.onnx"
        example = (torch.zeros(1, 1, 8, 8),)
        with torch.no_grad():
            if exporter == "dynamo":
                batch = {0: torch.export.Dim.DYNAMIC}
                program = torch.onnx.export(
                    model, example, dynamo=True, input_names=["image"], verbose=False,
                    dynamic_shapes=(batch,), external_data=False,
                )  # fmt: skip
                onnx.save(program.model_proto, path)
            else:
                torch.onnx.export(model, example, str(path), dynamo=False, input_names=["image"],
                                  dynamic_axes={"image": {0: "n"}}, opset_version=17)  # fmt: skip
        cases.append(Case(f"digits.{exporter}", path, [{"image": x_test}], labels=y_test))
    return cases


def print_row(name: str, result: dict) -> None:
    cells = [f"{1 - result[k]:.2g}" for k in ("Q~F", "PQ~Q", "QPF~Q", "PQ~PF", "QPF~PF", "PQ~QPF")]
    same = "" if result["same"] else " (F planned alone)"
    line = (f"| {name} | {result['default']} | {result['groups']} | {result['params']:.1%} | "
            f"{result['oracle']:.2g} | " + " | ".join(cells) + f" |{same}")  # fmt: skip
    if "accuracy" in result:
        line += " accuracy " + ", ".join(f"{m} {a:.1%}" for m, a in result["accuracy"].items())
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    everything = [*ZOO, *TORCHVISION, *TEXT, "digits"]
    parser.add_argument("--models", nargs="+", default=everything, choices=everything)
    parser.add_argument("--exporters", nargs="+", default=list(EXPORTERS), choices=EXPORTERS)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print(f"ratio {args.ratio}; 1 - cosine of the outputs (mean per sample, token or sentence)\n")
    print("| model | default | groups | params- | oracle | Q~F | PQ~Q | QPF~Q | PQ~PF | QPF~PF "
          "| PQ~QPF |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pruned = total = 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        makers: list[Callable[[], list[Case]]] = [
            lambda: zoo_cases([m for m in args.models if m in ZOO], args.exporters),
            lambda: torchvision_cases(
                [m for m in args.models if m in TORCHVISION], args.exporters, folder
            ),
            lambda: text_cases([m for m in args.models if m in TEXT], args.exporters),
            lambda: digits_cases(args.exporters, folder) if "digits" in args.models else [],
        ]
        for make in makers:
            for case in make():
                started = time.perf_counter()
                total += 1
                try:
                    result = row(case, args.ratio, folder)
                except Exception as error:  # onnxruntime's quantizer or ours: report, go on
                    print(f"| {case.name} | FAILED {type(error).__name__}: {error}"[:200])
                    continue
                pruned += result["params"] > 0.05 and result["oracle"] < 1e-4
                print_row(case.name, result)
                print(f"<!-- {case.name}: {time.perf_counter() - started:.0f} s -->", flush=True)
    print(f"\npruned more than 5% of parameters, equal to the oracle: {pruned} of {total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
