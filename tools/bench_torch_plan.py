"""The plan handed back to PyTorch (issue 20): for each torchvision, timm and transformers
model of the corpus (`tools/corpus/`), its export pruned at 0.5 (L2, per group), the plan
applied to the torch module (`graphprune.torch.apply_plan`), the module exported again
with the same exporter, and both ONNX models run in onnxruntime on the same inputs.

A (model, variant) *matches* when the outputs agree to 1e-4 of their scale and the layers
of both read as many weights, counted per layer after graphprune's loading
(`weights_by_use`; loading folds constant lookups, such as a position table, that the
exporter left). Exports
that fail, or that have nothing to prune, are listed and not counted. Each (model,
variant) runs in its own subprocess with a time limit.

    python tools/bench_torch_plan.py --representatives --json torch-plan.json
    python tools/bench_torch_plan.py --model 'transformers/*' --variant dynamo
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

import corpus  # noqa: E402
from benchkit.tables import markdown  # noqa: E402

TOLERANCE = 1e-4
SCALE_FLOOR = 1e-2
RATIO = 0.5
SOURCES = ("torchvision", "timm", "transformers")
_LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"}


def evaluate(entry: corpus.Entry, variant: str) -> dict[str, Any]:
    """One (model, variant); never raises for the model's sake."""
    import numpy as np
    import onnx
    from corpus.evaluate import reason_of
    from corpus.exporting import _torch_export, materialize
    from corpus.registry import VARIANTS, ExportFailed

    import graphprune as gp
    from graphprune.core.metrics import count_params
    from graphprune.runtime.sessions import run, session
    from graphprune.torch import apply_plan

    row: dict[str, Any] = {"model": entry.name, "source": entry.source, "variant": variant}
    try:
        path = materialize(entry, variant)
    except ExportFailed as error:
        return {**row, "status": "export-failed", "reason": str(error)[:200]}
    exported = onnx.load(str(path))
    built = entry.build()
    shape = [d.dim_value for d in exported.graph.input[0].type.tensor_type.shape.dim]
    if list(built.inputs[0].shape) != shape and built.larger is not None:
        built = built.larger()  # the export fell back to the larger input size
    try:
        result = gp.prune_model(gp.PruneOptions(model=str(path), plan=gp.PlanOptions(ratio=RATIO)))
    except Exception as error:
        return {**row, "status": "not-pruned", "reason": reason_of(error)}
    if not result.plan.choices:
        return {**row, "status": "not-pruned", "reason": "no prunable group"}
    started = time.perf_counter()
    try:
        module = apply_plan(built.module, {"plan": result.report["plan"]}, built.inputs, model=path)
    except Exception as error:
        return {**row, "status": "apply-failed", "reason": reason_of(error)}
    row["apply_s"] = round(time.perf_counter() - started, 2)
    try:
        variant_spec = VARIANTS[variant]
        again = _torch_export(
            corpus.Built(module, built.inputs, built.input_names, {}), variant_spec
        )
    except Exception as error:
        return {**row, "status": "reexport-failed", "reason": reason_of(error)}
    feeds = {
        info.name: tensor.numpy()
        for info, tensor in zip(result.model.graph.input, built.inputs, strict=False)
    }
    expected = run(session(result.model, "CPUExecutionProvider"), feeds)
    try:
        actual = run(session(again, "CPUExecutionProvider"), feeds)
    except Exception as error:
        return {
            **row,
            "status": "mismatch",
            "reason": f"the module's export fails: {reason_of(error)}",
        }
    params = (weights_by_use(result.model), weights_by_use(gp.load(again)))
    row["params"] = list(params)
    row["params_removed"] = round(1 - count_params(result.model) / count_params(exported), 4)
    if [a.shape for a in actual] != [e.shape for e in expected]:
        return {**row, "status": "mismatch", "reason": "output shapes differ"}
    scale = max(max(float(np.abs(e).max(initial=0)) for e in expected), SCALE_FLOOR)
    difference = max(
        float(np.abs(a - e).max(initial=0)) for a, e in zip(actual, expected, strict=True)
    )
    row["relative_difference"] = difference / scale
    if difference > TOLERANCE * scale:
        return {
            **row,
            "status": "mismatch",
            "reason": f"outputs differ by {difference / scale:.2e} of their scale",
        }
    if params[0] != params[1]:
        return {**row, "status": "mismatch", "reason": f"{params[1]} weights, not {params[0]}"}
    return {**row, "status": "match"}


def weights_by_use(model) -> int:
    """Float weights the model's layers (Conv, ConvTranspose, Gemm, MatMul, Gather) read,
    each counted once per layer reading it, through Identity: exporters share equal
    constants (the classic one through Identity nodes) and the rewrite gives each layer its
    own copy; norms are left out, since the exporters fold them in different ways."""
    import numpy as np
    import onnx

    import graphprune as gp

    view = gp.GraphView(model)
    sizes = {
        t.name: int(np.prod(t.dims, dtype=np.int64))
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    return sum(
        sizes.get(view.storage(name) or "", 0)
        for node in model.graph.node
        if node.op_type in _LAYERS
        for name in set(node.input)
        if name
    )


def selection(args: argparse.Namespace) -> list[tuple[corpus.Entry, str]]:
    from corpus.vision import TIMM, TORCHVISION_REPRESENTATIVES

    starred = {f"timm/{m.rstrip('*')}" for m in TIMM.values() if m.endswith("*")}
    chosen = []
    for entry in corpus.entries(tuple(args.source or SOURCES)):
        if args.model and not any(fnmatch.fnmatch(entry.name, g) for g in args.model):
            continue
        if (
            args.representatives
            and entry.source != "transformers"
            and not (
                entry.name.split("/", 1)[1] in TORCHVISION_REPRESENTATIVES or entry.name in starred
            )
        ):
            continue
        for variant in args.variant:
            if variant in entry.variants:
                chosen.append((entry, variant))
    return chosen


def run_one(entry: corpus.Entry, variant: str, timeout: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", entry.name, variant]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    row = {"model": entry.name, "source": entry.source, "variant": variant}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": "crash", "reason": f"timeout after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        return {**row, "status": "crash", "reason": f"worker exited {done.returncode}: {tail}"}
    return {**json.loads(lines[-1]), "wall_s": round(time.perf_counter() - started, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    """Per source: models whose export prunes (M), of them matching (N), and the rest."""
    lines = []
    keys = [*sorted({(r["source"], r["variant"]) for r in rows}), ("**all**", "")]
    for source, variant in keys:
        chosen = [
            r
            for r in rows
            if source == "**all**" or (r["source"], r["variant"]) == (source, variant)
        ]
        count = Counter(r["status"] for r in chosen)
        prunes = sum(
            count[s] for s in ("match", "mismatch", "apply-failed", "reexport-failed", "crash")
        )
        lines.append({
            "source": source, "variant": variant, "prunes (M)": prunes,
            "match (N)": count["match"],
            "rate": f"{count['match'] / prunes:.1%}" if prunes else "-",
            "apply failed": count["apply-failed"] + count["reexport-failed"],
            "mismatch": count["mismatch"], "crash": count["crash"],
            "not pruned": count["not-pruned"], "export failed": count["export-failed"],
        })  # fmt: skip
    return markdown(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", nargs="+", choices=SOURCES)
    parser.add_argument("--model", nargs="+", help="model globs (timm/vit_*, ...)")
    parser.add_argument(
        "--variant", nargs="+", default=["dynamo", "classic"], choices=["dynamo", "classic"]
    )
    parser.add_argument(
        "--representatives",
        action="store_true",
        help="one model per torchvision and timm family (and all transformers)",
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (model, variant)")
    parser.add_argument("--json", type=Path, help="results file (read, merged, rewritten)")
    parser.add_argument("--list", action="store_true", help="list the selection and exit")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, variant = args.worker
        entry = next(e for e in corpus.entries((name.split("/", 1)[0],)) if e.name == name)
        print(json.dumps(evaluate(entry, variant)), flush=True)
        return 0
    chosen = selection(args)
    if args.list:
        for entry, variant in chosen:
            print(entry.name, variant)
        return 0
    results = {}
    if args.json is not None and args.json.exists():
        results = {
            (r["model"], r["variant"]): r for r in json.loads(args.json.read_text())["results"]
        }
    started = time.perf_counter()
    for entry, variant in chosen:
        row = run_one(entry, variant, args.timeout)
        results[(entry.name, variant)] = row
        print(
            f"{entry.name:<44} {variant:<8} {row['status']:<15} {row.get('reason', '')[:110]}",
            flush=True,
        )
        if args.json is not None:
            rows = sorted(results.values(), key=lambda r: (r["source"], r["model"], r["variant"]))
            args.json.write_text(json.dumps({"results": rows}, indent=1))
    rows = sorted(results.values(), key=lambda r: (r["source"], r["model"], r["variant"]))
    print(table(rows))
    print(f"{len(chosen)} run in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
