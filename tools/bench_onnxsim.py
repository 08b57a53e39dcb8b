"""graphprune side by side with onnxsim 0.8.x's pruning module (issue 11), on the same models.

For every (model, variant, what), each tool prunes the same file at ``--ratio`` (0.3):

* models: zoo CNNs (``models/zoo.py``) and transformers built from configs plus the real
  MiniLM (``models/transformers_zoo.py``), torch's classic and dynamo exports;
* variants: ``raw`` (the export), ``fused`` (``onnxruntime.transformers.optimizer``: fused
  Attention, SkipLayerNormalization, BiasGelu...), ``qdq`` (static, per-channel QDQ),
  ``qop`` (static QOperator: QLinearConv/QLinearMatMul), ``dynamic`` (dynamic
  quantization: MatMulInteger/ConvInteger), ``nbits`` (MatMulNBits, 4 bits, block 32);
* what: ``width`` (conv channels and MLP widths: graphprune ``--only channels --only mlp``,
  onnxsim ``apply_structured_pruning`` or the variant's own entry point) or ``heads``
  (graphprune ``--only heads``, onnxsim ``apply_attention_head_pruning``). For onnxsim every
  entry point that applies is tried (the Python one and the C++ dispatcher
  ``apply_structured_pruning_cpp``) and the one removing most parameters is shown.

Columns per tool: ``removed`` = weight bytes removed (all initializers, quantized ones as
stored; or the error / "nothing" when the tool declines), ``runs`` = the pruned model runs
in onnxruntime with the original's output shapes, ``dead`` = the exactness check below.

Exactness, the same check for both tools (each claims its removal is exact for the kept
channels). Before the variant is made, every Conv/ConvTranspose/Gemm/MatMul weight of the
float model gets the same pattern of *dead* positions on its output and input axes (with
biases and BatchNorm shifts): position c is dead when (c // block) is even, with block 1 for
convolutions and, in transformers, a head's width times the ratio of the layer's width to
the key/value width (so whole heads, whole GQA groups and half of every MLP die together).
Dead channels then have zero weight everywhere and contribute exactly nothing, and every
group is half dead. A pruner removing 30% by any magnitude ranking removes only dead
channels, so its output must equal the dead-patterned model's: ``dead`` is the largest
relative output deviation (max |diff| / max |output|), ``ok`` below 1e-4. A wrong slice shows
up as O(1). graphprune's own masking oracle (``gp.mask``) on the same input is the ``oracle``
column.

    pip install onnxsim==0.8.1             # not a graphprune dependency
    python tools/bench_onnxsim.py          # everything (a few minutes)
    python tools/bench_onnxsim.py --quick  # a handful of rows
    python tools/bench_onnxsim.py --models bert gpt2 --variants raw fused --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.runtime.inputs import input_shapes, random_inputs  # noqa: E402

CNNS = ["resnet18", "mobilenetv2", "efficientnet", "regnet", "densenet", "yolov8", "unet"]
TEXT = {"bert": "bert", "minilm": "bert", "gpt2": "gpt2", "vit": "vit", "llama": None}
VARIANTS = ("raw", "fused", "qdq", "qop", "dynamic", "nbits")
QUICK = [("resnet18", "classic"), ("bert", "classic"), ("gpt2", "dynamo")]
TOLERANCE = 1e-4


@dataclass
class Tool:
    removed: str = ""
    runs: str = ""
    dead: str = ""
    oracle: str = ""
    entry: str = ""
    seconds: float = 0.0


@dataclass
class Row:
    model: str
    exporter: str
    variant: str
    what: str
    params: int
    graphprune: Tool
    onnxsim: Tool


# ---------------------------------------------------------------- the models and their variants


def source(name: str, exporter: str) -> tuple[onnx.ModelProto, int, int | None, int]:
    """The export, the dead pattern's head width (1 for CNNs), its key/value width and the
    number of attention heads (0 for CNNs)."""
    if name in TEXT:
        from models.torchvision_cpu import import_torchvision

        import_torchvision()
        from models import transformers_zoo as tz

        entry = tz.TRANSFORMERS[name]
        model = onnx.load(str(tz.cached(name, exporter)))
        hidden = _hidden_size(model)
        head = hidden // entry.heads
        return model, head, head * entry.kv_heads, entry.heads
    from models import export

    return onnx.load(str(export.cached(name, exporter))), 1, None, 0


def _hidden_size(model: onnx.ModelProto) -> int:
    """The width of the embedding: the table a Gather reads the token ids with, or the
    patch Conv's output channels."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and len(table.dims) == 2:
            return int(table.dims[1])
        if node.op_type == "Conv" and node.input[1] in inits:
            return int(inits[node.input[1]].dims[0])
    raise ValueError("no embedding found")


def _dead(width: int, head: int, kv_width: int | None) -> np.ndarray:
    block = head * (width // kv_width) if kv_width and width % kv_width == 0 else head
    return (np.arange(width) // max(block, 1)) % 2 == 0


def kill_half(model: onnx.ModelProto, head: int, kv_width: int | None) -> onnx.ModelProto:
    """Zero the dead positions of every weight (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    changed: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray | None:
        if name in changed:
            return changed[name]
        if name in inits and inits[name].data_type in (onnx.TensorProto.FLOAT, 10):
            return numpy_helper.to_array(inits[name]).copy()
        return None

    def zero(name: str, axis: int, *, skip_single: bool = False) -> None:
        values = array(name)
        if values is None or values.ndim == 0 or (skip_single and values.shape[axis] == 1):
            return
        mask = _dead(values.shape[axis], head, kv_width)
        index = [slice(None)] * values.ndim
        index[axis] = mask
        values[tuple(index)] = 0
        changed[name] = values

    producers = {}
    for node in model.graph.node:
        op = node.op_type
        if op == "Conv" and len(node.input) > 1:
            zero(node.input[1], 0)
            zero(node.input[1], 1, skip_single=True)
            if len(node.input) > 2:
                zero(node.input[2], 0)
        elif op == "ConvTranspose" and len(node.input) > 1:  # weight [in, out / group, ...]
            zero(node.input[1], 1, skip_single=True)
            zero(node.input[1], 0)
            if len(node.input) > 2:
                zero(node.input[2], 0)
        elif op == "Gemm" and len(node.input) > 1:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            zero(node.input[1], 0)
            zero(node.input[1], 1)
            if len(node.input) > 2:
                zero(node.input[2], -1)
            del trans_b  # both axes get the pattern, whatever the orientation
        elif op == "MatMul" and array(node.input[1]) is not None:
            zero(node.input[1], -1)
            zero(node.input[1], -2)
            producers[node.output[0]] = node
        elif op == "Add" and node.input[0] in producers:
            values = array(node.input[1])
            if values is not None and values.ndim == 1 and values.size > 1:
                zero(node.input[1], 0)
        elif op == "BatchNormalization":
            zero(node.input[1], 0)
            zero(node.input[2], 0)
    for name, values in changed.items():
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(values.dtype), name))
    return model


class _Reader:
    """Seeded random calibration feeds for onnxruntime's static quantizer."""

    def __init__(self, model: onnx.ModelProto, count: int = 4) -> None:
        shapes = input_shapes(model)
        self._feeds = iter([random_inputs(model, shapes, seed) for seed in range(count)])

    def get_next(self):
        return next(self._feeds, None)


def variant(model: onnx.ModelProto, kind: str, family: str | None, heads: int, folder: Path):
    """The model in deployment form `kind`, or None where that form does not apply."""
    from onnxruntime import quantization as q

    src = folder / "src.onnx"
    onnx.save(model, str(src))
    out = folder / f"{kind}.onnx"
    if kind == "raw":
        return model
    if kind == "fused":
        if family is None:
            return None
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(src), model_type=family, num_heads=heads,
                                   hidden_size=_hidden_size(model), opt_level=1)  # fmt: skip
        return optimized.model
    if kind == "nbits":
        if family is None and not any(n.op_type == "MatMul" for n in model.graph.node):
            return None
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=False)
        quantizer.process()
        return quantizer.model.model
    if kind == "dynamic":
        q.quantize_dynamic(str(src), str(out), weight_type=q.QuantType.QInt8)
        return onnx.load(str(out))
    fmt = q.QuantFormat.QDQ if kind == "qdq" else q.QuantFormat.QOperator
    q.quantize_static(
        str(src), str(out), _Reader(model), quant_format=fmt, per_channel=True,
        weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
    )  # fmt: skip
    return onnx.load(str(out))


# ---------------------------------------------------------------- the two tools


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    return session.run(None, feeds)


def deviation(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            return float("inf")
        scale = float(np.max(np.abs(e))) or 1.0
        worst = max(worst, float(np.max(np.abs(e.astype(np.float64) - a))) / scale)
    return worst


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers, whatever their type (quantized weights count as stored)."""
    return sum(
        int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )


def strip_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without initializers no node reads (onnxsim's block removal leaves the
    dropped block's weights behind), so weight bytes count what the model needs."""
    used = {o.name for o in model.graph.output}
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            used.update(node.input)
            stack.extend(a.g for a in node.attribute if a.HasField("g"))
            stack.extend(g for a in node.attribute for g in a.graphs)
    kept = [t for t in model.graph.initializer if t.name in used]
    if len(kept) == len(model.graph.initializer):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def judge(tool: Tool, dense: onnx.ModelProto, pruned: onnx.ModelProto | None, feeds, reference):
    if pruned is None:
        return
    pruned = strip_unused(pruned)
    before, after = weight_bytes(dense), weight_bytes(pruned)
    if after >= before:
        tool.removed = "nothing"
        return
    tool.removed = f"{1 - after / before:.1%}"
    try:
        outputs = run(pruned, feeds)
    except Exception as error:
        tool.runs = f"no: {str(error).splitlines()[0][:60]}"
        return
    dev = deviation(reference, outputs)
    tool.runs = "yes" if np.isfinite(dev) else "shape changed"
    tool.dead = f"{'ok' if dev < TOLERANCE else 'WRONG'} {dev:.1e}"


def graphprune_tool(model, what: str, ratio: float, feeds, reference) -> Tool:
    tool = Tool(entry=f"prune --only {'heads' if what == 'heads' else 'channels --only mlp'}")
    start = time.perf_counter()
    try:
        loaded = gp.load(model)
        analysis = gp.analyze(loaded)
        only = ("heads",) if what == "heads" else ("channels", "mlp")
        plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, only=only))
        pruned = gp.prune(analysis, plan)
        oracle = deviation(run(gp.mask(analysis, plan), feeds), run(pruned, feeds))
        tool.oracle = f"{'ok' if oracle < TOLERANCE else 'WRONG'} {oracle:.1e}"
    except gp.GraphpruneError as error:
        tool.removed = f"error: {str(error)[:60]}"
        return tool
    tool.seconds = time.perf_counter() - start
    judge(tool, model, pruned, feeds, reference)
    return tool


def onnxsim_entries(variant_name: str, what: str):
    import onnxsim
    from onnxsim import pruning as p

    if what == "heads":
        return [("apply_attention_head_pruning", p.apply_attention_head_pruning)]
    own = {
        "qdq": [("apply_structured_pruning_qdq", p.apply_structured_pruning_qdq)],
        "qop": [("apply_structured_pruning_qoperator", p.apply_structured_pruning_qoperator)],
        "dynamic": [
            ("apply_structured_pruning_dynamic_quantize_matmul",
             p.apply_structured_pruning_dynamic_quantize_matmul),
            ("apply_structured_pruning_dynamic_quantize_conv",
             p.apply_structured_pruning_dynamic_quantize_conv),
        ],
        "nbits": [("apply_structured_pruning_matmul_nbits",
                   p.apply_structured_pruning_matmul_nbits)],
    }.get(variant_name, [("apply_structured_pruning", p.apply_structured_pruning)])  # fmt: skip
    return [*own, ("apply_structured_pruning_cpp", onnxsim.apply_structured_pruning_cpp)]


def onnxsim_tool(model, variant_name: str, what: str, ratio: float, feeds, reference) -> Tool:
    best: tuple[int, str, onnx.ModelProto] | None = None
    errors = []
    start = time.perf_counter()
    for name, entry in onnxsim_entries(variant_name, what):
        try:
            copy = onnx.ModelProto.FromString(model.SerializeToString())
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                pruned = entry(copy, sparsity=ratio)
        except Exception as error:
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:50]}")
            continue
        params = weight_bytes(pruned)
        if best is None or params < best[0]:
            best = (params, name, pruned)
    tool = Tool(seconds=time.perf_counter() - start)
    if best is None:
        tool.removed = f"error: {errors[0]}" if errors else "nothing"
        return tool
    tool.entry = best[1]
    judge(tool, model, best[2], feeds, reference)
    return tool


# ---------------------------------------------------------------- the table


def rows_for(name: str, exporter: str, variants, ratio: float) -> list[Row]:
    base, head, kv_width, heads = source(name, exporter)
    dead = kill_half(base, head, kv_width)
    family = TEXT.get(name)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnxsim-") as tmp:
        for kind in variants:
            try:
                model = variant(dead, kind, family, heads, Path(tmp))
            except Exception as error:
                print(f"  {name} {exporter} {kind}: variant failed: {error}", file=sys.stderr)
                continue
            if model is None or (kind != "raw" and weight_bytes(model) == weight_bytes(dead)):
                continue  # the form does not apply, or the quantizer found nothing to do
            feeds = random_inputs(model, input_shapes(model), 0)
            reference = run(model, feeds)
            for what in ("width", "heads") if name in TEXT else ("width",):
                rows.append(Row(
                    name, exporter, kind, what, weight_bytes(model),
                    graphprune_tool(model, what, ratio, feeds, reference),
                    onnxsim_tool(model, kind, what, ratio, feeds, reference),
                ))  # fmt: skip
                print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: Row) -> str:
    g, s = row.graphprune, row.onnxsim
    return (
        f"{row.model:<12} {row.exporter:<7} {row.variant:<7} {row.what:<5} {row.params:>9} | "
        f"{g.removed:<22.22} {g.runs:<5.5} {g.dead:<14} {g.oracle:<14} | "
        f"{s.removed:<22.22} {s.runs:<5.5} {s.dead:<14} {s.entry}"
    )


def summary(rows: list[Row]) -> str:
    lines = []
    for label, pick in (("graphprune", lambda r: r.graphprune), ("onnxsim", lambda r: r.onnxsim)):
        tools = [pick(r) for r in rows]
        pruned = [t for t in tools if t.removed.endswith("%")]
        exact = [t for t in pruned if t.dead.startswith("ok")]
        wrong = [t for t in pruned if t.dead.startswith("WRONG") or not t.runs.startswith("yes")]
        mean = np.mean([float(t.removed[:-1]) for t in pruned]) if pruned else 0.0
        lines.append(
            f"{label:<10} pruned {len(pruned)}/{len(rows)} rows, exact {len(exact)}, "
            f"wrong or broken {len(wrong)}, mean weight bytes removed where pruned {mean:.1f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[*CNNS, *TEXT])
    parser.add_argument("--exporters", nargs="*", default=["classic", "dynamo"])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("ORT_LOG_LEVEL", "3")
    import onnxsim

    print(f"command: python tools/bench_onnxsim.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"graphprune {gp.__version__}, onnxsim {onnxsim.__version__}, ratio {args.ratio}")
    print(f"{'model':<12} {'export':<7} {'variant':<7} {'what':<5} {'bytes':>9} | "
          f"{'graphprune removed':<22} {'runs':<5} {'dead':<14} {'oracle':<14} | "
          f"{'onnxsim removed':<22} {'runs':<5} {'dead':<14} entry")  # fmt: skip
    pairs = QUICK if args.quick else [(m, e) for m in args.models for e in args.exporters]
    rows: list[Row] = []
    for name, exporter in pairs:
        try:
            rows += rows_for(name, exporter, args.variants, args.ratio)
        except ValueError as error:  # a model its exporter cannot export
            print(f"  {name} {exporter}: {error}", file=sys.stderr)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
