"""Which engine can train the corpus: graphprune's lowering onto torch against onnx2torch.

For every model of the corpus (`tools/corpus`: torchvision, timm, Hugging Face transformers
in their export variants, and the third-party files; `--sources`), of the zoo
(`models/zoo.py`, both exporters), the transformers and mixture-of-experts zoos, and the
onnxruntime-fused transformers (`tools/fused_models.py`), with seeded inputs the model
runs on (the corpus's own feeds; third-party: the registry's validation input):

* ops: the distinct op types of the model (subgraphs included);
* lowering: the ops it has no rule for (a one-line refusal naming them), else its outputs
  against onnxruntime's (`rel`: largest |difference| over the largest |output|; pass under
  1e-4, 1e-2 for float16 models, which the lowering computes in float32) and one backward
  pass of the outputs' mean square (`grad`: the share of trained weights that receive a
  finite, non-zero gradient);
* onnx2torch (when importable: 1.5.15 from a venv, see below): `onnx2torch.convert`, its
  module run on the same inputs against onnxruntime, or the first line of its error.

The summary counts models each engine converts and reproduces, and the ops that stop
each. onnxruntime-training is not run: it cannot be installed beside onnxruntime-gpu (a
graphprune dependency), so it cannot be the engine of a graphprune command.

    python -m venv --system-site-packages /tmp/o2t-venv
    /tmp/o2t-venv/bin/pip install onnx2torch==1.5.15 --no-deps
    /tmp/o2t-venv/bin/python tools/bench_recovery_coverage.py --json rows.json
    python tools/bench_recovery_coverage.py --sources zoo fused thirdparty   # no export wait

Exports are cached (`GRAPHPRUNE_CORPUS_CACHE`, `GRAPHPRUNE_ZOO_CACHE`); the first run of the
whole corpus exports for hours on a small machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from graphprune.errors import GraphpruneError, first_line  # noqa: E402
from graphprune.io.protos import all_graphs  # noqa: E402
from graphprune.recovery.lowering import (  # noqa: E402
    LoweredModel,
    feeds_to_torch,
    op_label,
    unsupported_ops,
)
from graphprune.runtime.sessions import run, session  # noqa: E402

SOURCES = ("zoo", "fused", "thirdparty", "torchvision", "timm", "transformers")


def models(sources: tuple[str, ...]):
    """(name, path thunk, feeds thunk or None) for every model of `sources`."""
    from models.export import EXPORTERS
    from models.export import cached as zoo_cached
    from models.moe_zoo import MOE
    from models.transformers_zoo import TRANSFORMERS
    from models.transformers_zoo import cached as tx_cached
    from models.zoo import ZOO

    if "zoo" in sources:
        for name, entry in ZOO.items():
            for exporter in getattr(entry, "exporters", EXPORTERS):
                yield f"zoo/{name}.{exporter}", lambda n=name, e=exporter: zoo_cached(n, e), None
        for name, entry in TRANSFORMERS.items():
            for exporter in entry.exporters:
                yield f"tx/{name}.{exporter}", lambda n=name, e=exporter: tx_cached(n, e), None
        for name, entry in MOE.items():
            for exporter in entry.exporters:
                yield f"moe/{name}.{exporter}", lambda n=name, e=exporter: zoo_cached(
                    f"moe-{n}", e), None  # fmt: skip
    if "fused" in sources:
        import fused_models

        for name in fused_models.FUSED:
            yield f"fused/{name}", lambda n=name: fused_models.cached(n), None
    corpus_sources = tuple(s for s in sources if s in ("torchvision", "timm", "transformers",
                                                       "thirdparty"))  # fmt: skip
    if corpus_sources:
        from corpus import VARIANTS, entries
        from corpus.exporting import materialize

        for entry in entries(corpus_sources):
            for variant in entry.variants:
                feeds = None
                if entry.thirdparty is not None:
                    import thirdparty

                    feeds = lambda n=entry.thirdparty: thirdparty.validation_input(n)  # noqa: E731
                batch = 3 if VARIANTS[variant].dynamic else 1
                yield (f"{entry.name}.{variant}", lambda e=entry, v=variant: materialize(e, v),
                       feeds or batch)  # fmt: skip


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], o2t) -> dict:
    ops = sorted({op_label(n) for g in all_graphs(model.graph) for n in g.node})
    row: dict = {"ops": ops}
    expected = run(session(model, "CPUExecutionProvider"), feeds)
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    tolerance = 1e-2 if half else 1e-4
    missing = unsupported_ops(model)
    row["lowering_missing"] = missing
    if not missing:
        row.update(_lowering(model, feeds, expected, tolerance))
    if o2t is not None:
        row.update(_onnx2torch(o2t, model, feeds, expected, tolerance))
    return row


def _lowering(model, feeds, expected, tolerance) -> dict:
    try:
        lowered = LoweredModel(model, "all")
        names = [o.name for o in model.graph.output]
        got = lowered(feeds_to_torch(feeds, torch.device("cpu")), names)
        rel = _rel(expected, [g.detach().numpy() for g in got])
        floats = [g for g in got if g.is_floating_point() and g.requires_grad]
        share = None
        if floats:
            sum(g.float().square().mean() for g in floats).backward()
            params = list(lowered.parameters())
            good = sum(1 for p in params if p.grad is not None and bool(
                torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()))  # fmt: skip
            share = good / len(params) if params else None
        return {"lowering_rel": rel, "lowering_ok": rel < tolerance, "lowering_grad": share,
                "lowering_weights": len(lowered.weights)}  # fmt: skip
    except GraphpruneError as error:
        return {"lowering_error": first_line(error), "lowering_ok": False}


def _onnx2torch(o2t, model, feeds, expected, tolerance) -> dict:
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = o2t.convert(model)
            names = [i.name for i in model.graph.input
                     if i.name not in {t.name for t in model.graph.initializer}]  # fmt: skip
            with torch.no_grad():
                got = module(*[torch.from_numpy(np.array(feeds[n])) for n in names])
        got = got if isinstance(got, (list, tuple)) else [got]
        rel = _rel(expected, [g.numpy() for g in got])
        return {"o2t_rel": rel, "o2t_ok": rel < tolerance}
    except Exception as error:  # any failure of the converter is its answer here
        return {"o2t_error": f"{type(error).__name__}: {first_line(error)}"[:200], "o2t_ok": False}


def _rel(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    worst = 0.0
    if len(expected) != len(actual):
        return float("inf")
    for a, b in zip(expected, actual, strict=True):
        if a.shape != tuple(b.shape):
            return float("inf")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = max(float(np.abs(a64).max()) if a64.size else 0.0, 1e-6)
        worst = max(worst, float(np.abs(a64 - b64).max()) / scale if a64.size else 0.0)
    return worst


def _feeds(model, spec) -> dict[str, np.ndarray]:
    if callable(spec):
        return spec()
    from graphprune.runtime.inputs import input_shapes, random_inputs

    return random_inputs(model, input_shapes(model, batch=spec or 1), seed=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--json", help="append one JSON row per model here")
    parser.add_argument("--match", help="only models whose name contains this")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    try:
        from models.torchvision_cpu import import_torchvision

        import_torchvision()  # onnx2torch imports torchvision
        import onnx2torch as o2t
    except ImportError:
        o2t = None
    rows = []
    for name, path_of, feeds_spec in models(tuple(args.sources)):
        if args.match and args.match not in name:
            continue
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = onnx.load(str(path_of()))
                row = {"model": name, **evaluate(model, _feeds(model, feeds_spec), o2t)}
        except Exception as error:  # export failures and models that do not run: say so
            row = {"model": name, "skipped": f"{type(error).__name__}: {first_line(error)}"[:200]}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        _print_row(row)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    summary(rows, o2t is not None)
    return 0


def _print_row(row: dict) -> None:
    if "skipped" in row:
        print(f"{row['model']:<48} skipped: {row['skipped']}", flush=True)
        return
    if row["lowering_missing"]:
        low = "missing " + ",".join(row["lowering_missing"])
    elif "lowering_error" in row:
        low = "error " + row["lowering_error"][:60]
    else:
        grad = row["lowering_grad"]
        low = (f"rel {row['lowering_rel']:.1e} {'ok' if row['lowering_ok'] else 'DIFFERS'} grad "
               + ("-" if grad is None else f"{grad:.2f}"))  # fmt: skip
    o2t = ""
    if "o2t_ok" in row:
        o2t = f"  | onnx2torch {'ok' if row['o2t_ok'] else row.get('o2t_error', 'DIFFERS')[:50]}"
    print(f"{row['model']:<48} {len(row['ops']):>3} ops  lowering {low}{o2t}", flush=True)


def summary(rows: list[dict], with_o2t: bool) -> None:
    done = [r for r in rows if "skipped" not in r]
    ops = collections.Counter(op for r in done for op in r["ops"])
    missing = collections.Counter(op for r in done for op in r["lowering_missing"])
    print(f"\n{len(done)} models run ({len(rows) - len(done)} skipped: export or input failures)")
    ok = sum(1 for r in done if r.get("lowering_ok"))
    grads = sum(1 for r in done if r.get("lowering_ok") and (r.get("lowering_grad") or 0) > 0)
    print(f"lowering: {ok}/{len(done)} models reproduce onnxruntime, {grads} of them train; "
          f"{len(ops) - len(missing)}/{len(ops)} distinct ops covered")  # fmt: skip
    if missing:
        print("  ops without a rule (models): " + ", ".join(
            f"{op} ({count})" for op, count in missing.most_common()))  # fmt: skip
    if with_o2t:
        ok = sum(1 for r in done if r.get("o2t_ok"))
        errors = collections.Counter(r["o2t_error"].split(":")[0] + ": " + r["o2t_error"].split(
            ":")[1][:60] for r in done if "o2t_error" in r)  # fmt: skip
        print(f"onnx2torch: {ok}/{len(done)} models reproduce onnxruntime")
        for reason, count in errors.most_common(12):
            print(f"  {count:>3} x {reason}")


if __name__ == "__main__":
    sys.exit(main())
