"""Quantized-graph benchmark: zoo exports quantized by onnxruntime, pruned at --ratio.

Each float export (the zoo's ResNet-18, MobileNetV2, EfficientNet, RegNet with both torch
exporters; BERT and LLaMA from configs) is quantized with ``onnxruntime.quantization``:

* ``dynamic``: ``quantize_dynamic`` (ConvInteger / MatMulInteger + DynamicQuantizeLinear);
  its activation scales come from each tensor's range, so it prunes only with
  ``--approximate-dynamic-quant`` (the oracle zeroes the removed channels at each
  quantizer's input; ``tools/bench_dynquant.py`` measures what it costs);
* ``qdq`` and ``qop``: ``quantize_static`` with per-channel int8 weights and uint8
  activations (onnxruntime's x86 default U8S8), QDQ and QOperator formats, calibrated on
  two random batches;
* ``nbits``: ``MatMulNBitsQuantizer`` (4-bit blocks of 32, asymmetric), transformers only.

Per model: prunable groups, parameters (int and float) removed by ``gp.prune`` (L2 on the
dequantized weights), the oracle (pruned vs ``gp.mask``, largest relative output
deviation; ``ok`` below ``--tolerance``), and whether the op types and integer weight types
are unchanged. Command::

    python tools/bench_quantized.py            # everything
    python tools/bench_quantized.py --models resnet18 --formats qdq qop
    python tools/bench_quantized.py --models densenet inception yolov8 --formats qdq qop
    python tools/bench_quantized.py --models --torchvision resnet18 mobilenet_v2 \
        efficientnet_b0 regnet_y_400mf     # torchvision's architectures, 224x224
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.runtime.inputs import input_shapes, random_inputs  # noqa: E402
from graphprune.runtime.sessions import run, session  # noqa: E402

CNNS = ("resnet18", "mobilenetv2", "efficientnet", "regnet")
TRANSFORMERS = {"bert": "classic", "llama": "dynamo"}
FORMATS = ("dynamic", "qdq", "qop", "nbits")


def float_exports(models: list[str]) -> list[tuple[str, Path]]:
    from models.export import cached
    from models.zoo import ZOO

    found = []
    for name in models:
        if name in ZOO:
            found += [(f"{name}.{e}", cached(name, e)) for e in ("classic", "dynamo")]
        else:
            from models.torchvision_cpu import import_torchvision

            import_torchvision()
            from models.transformers_zoo import cached as tx_cached

            found.append((f"{name}.{TRANSFORMERS[name]}", tx_cached(name, TRANSFORMERS[name])))
    return found


def torchvision_exports(names: list[str], folder: Path) -> list[tuple[str, Path]]:
    """torchvision's own architectures (random weights), classic export at 1x3x224x224."""
    import torch

    from models.export import OPSET
    from models.torchvision_cpu import import_torchvision

    torchvision = import_torchvision()
    found = []
    for name in names:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        path = folder / f"tv-{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                opset_version=OPSET, input_names=["input"], output_names=["output"],
            )  # fmt: skip
        found.append((f"tv-{name}.classic", path))
    return found


def quantize(source: Path, fmt: str, out: Path) -> None:
    from onnxruntime import quantization as q

    model = onnx.load(source)
    shapes = input_shapes(model)
    if fmt == "dynamic":
        # Its shape inference refuses the dynamo exporter's value_info (only a hint).
        del model.graph.value_info[:]
        plain = out.with_suffix(".float.onnx")
        onnx.save(model, plain)
        q.quantize_dynamic(str(plain), str(out))
    elif fmt == "nbits":
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False)
        quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        onnx.save(quantizer.model.model, out)
    else:
        feeds = [random_inputs(model, shapes, seed) for seed in (0, 1)]

        class Reader(q.CalibrationDataReader):
            def get_next(self):
                return feeds.pop() if feeds else None

        q.quantize_static(
            str(source), str(out), Reader(), per_channel=True,
            quant_format=q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
        )  # fmt: skip


def row(path: Path, fmt: str, ratio: float) -> dict:
    model = gp.load(str(path))
    analysis = gp.analyze(model, approximate_dynamic_quant=fmt == "dynamic")
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion="l2"))
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=5)
    provider = "CPUExecutionProvider"
    got = run(session(pruned, provider), feeds)
    expected = run(session(gp.mask(analysis, plan), provider), feeds)
    deviation = max(
        float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-2)
        for a, b in zip(expected, got, strict=True)
    )

    def params(m: onnx.ModelProto) -> int:
        return sum(int(np.prod(t.dims)) for t in m.graph.initializer)

    def kinds(m: onnx.ModelProto):
        # Constant nodes become initializers when graphprune loads a model.
        ops = Counter((n.domain, n.op_type) for n in m.graph.node if n.op_type != "Constant")
        types = {t.data_type for t in m.graph.initializer if len(t.dims) >= 2}
        return set(ops), types

    reasons = Counter(str(g.reasons[0]) for g in analysis.groups if not g.prunable)
    return {
        "groups": f"{len(analysis.prunable_groups)}/{len(analysis.groups)}",
        "pruned": bool(plan.removed_classes.size),
        "params": 1 - params(pruned) / params(model),
        "deviation": deviation,
        "same_kinds": kinds(pruned) == kinds(model),
        "reason": reasons.most_common(1)[0][0] if reasons else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[*CNNS, *TRANSFORMERS])
    parser.add_argument(
        "--torchvision", nargs="*", default=[], metavar="NAME",
        help="also torchvision builders (e.g. resnet18 mobilenet_v2 efficientnet_b0)",
    )  # fmt: skip
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    header = f"{'model':24} {'format':8} {'groups':>7} {'params-':>7} {'deviation':>10}  check"
    print(header)
    totals = Counter()
    with tempfile.TemporaryDirectory() as scratch:
        exports = float_exports(args.models)
        exports += torchvision_exports(args.torchvision, Path(scratch))
        for name, source in exports:
            for fmt in args.formats:
                cnn = name.split(".")[0] not in TRANSFORMERS
                if fmt == "nbits" and cnn:  # MatMul weights only
                    continue
                out = Path(scratch) / f"{name}.{fmt}.onnx"
                try:
                    quantize(source, fmt, out)
                except Exception as error:  # onnxruntime's quantizer: not ours to count
                    print(f"{name:24} {fmt:8} quantizer failed: {error}"[:160])
                    totals["unquantized"] += 1
                    continue
                try:
                    result = row(out, fmt, args.ratio)
                except Exception as error:  # report and go on
                    print(f"{name:24} {fmt:8} FAILED {type(error).__name__}: {error}"[:160])
                    totals["failed"] += 1
                    continue
                exact = result["deviation"] < args.tolerance
                check = ("ok" if exact else "ORACLE FAILS") + (
                    "" if result["same_kinds"] else ", ops or types changed"
                )
                totals["models"] += 1
                totals["pruned"] += result["pruned"] and result["same_kinds"]
                totals["exact"] += exact and result["pruned"]
                print(
                    f"{name:24} {fmt:8} {result['groups']:>7} {result['params']:7.1%} "
                    f"{result['deviation']:10.2e}  {check}"
                    + (f"  ({result['reason'][:60]})" if not result["pruned"] else "")
                )
    print(
        f"\nquantized models pruned: {totals['pruned']} of {totals['models']}; "
        f"exact against the oracle: {totals['exact']} of {totals['models']}; "
        f"failed: {totals['failed']}; onnxruntime could not quantize {totals['unquantized']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
