"""Does calibrated pruning generalise? all-MiniLM-L6-v2, MLP width halved, calibrated on one
kind of text and evaluated on held-out text of the same kind, of other kinds, and of
another sequence length.

Text (tools/text_corpus.py, offline, deterministic): calibration sentences from the
docstrings of numpy/scipy/torch; evaluation sets, each compared with the dense model:

  calib      the calibration sentences themselves
  docs       other docstring sentences (same kind, held out)
  licenses   sentences of the installed distributions' licence files (another kind)
  reference  sentences of the Python language reference (pydoc topics; another kind)
  long       passages of >= 120 words of the language reference (another kind and length)

`--calib-kinds docstrings reference` calibrates on a mix (the count split evenly; each
kind's held-out set stays disjoint from its calibration part); then only the licences are
of another kind, and the long passages are taken from them.

The calibration NPZ is what a user writes: the sentences tokenized together, padded to the
longest (`--layout padded`, attention_mask 0 on padding), or one NPZ per token length
(`--layout by-length`, no padding at all). Metric: cosine similarity of the mean-pooled,
normalised sentence embeddings (the model's use), mean and minimum over each set.

Every MLP 1536 -> 768 (`--only mlp --ratio 0.5`) with each criterion and compensation
(`--methods`: none, bias, lsq at each `--damps` value; "auto" chooses per layer by k-fold held-out
error on the calibration data, the chosen damps after the row). With `--errors`, the
relative reconstruction error of the lsq-repaired layers (last criterion) on the
calibration statistics, on their k-fold held-out split and on statistics of each
evaluation set. With `--sequential`, the last criterion and the first damp again, but
layer by layer with each layer's statistics taken from the model whose earlier layers are
already pruned and repaired (sequential calibration, as SparseGPT/SlimGPT do it), printed
after each layer.

Output-aware criteria (`fisher`, `obs-fisher`: gradients through the torch lowering,
`graphprune.recovery.fisher`). How the total removal is shared between the six MLPs: a
criterion `NAME` keeps every MLP at --ratio; `NAME:global` ranks the channels of all six
layers together (`--global --normalization none`: obs-greedy's scores allocate by relative
reconstruction error); `NAME:output` takes per-layer counts from output-weighted cost
curves (`tools/output_allocation.py`); `NAME:measured` allocates by the
measured effect of each layer on the calibration embedding (`measured_plan`). The total
removed is the same. `--allocation A ...` adds `:A` to every criterion given without one.

`--fold METHOD:METRIC ...` merges each MLP's neurons into the same 768 instead of removing
half (tools/fold_mlp.py: k-means or greedy pairs on pre- or post-activation distances,
then the down-projection re-fit by damped least squares at each --damps value); the
k-fold error of that re-fit is printed for the folds and for each plan's kept neurons.

Run: python tools/bench_calib_heldout.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fold_mlp
import text_corpus
from bench_posttrain_minilm import embed, export
from output_allocation import allocate, cost_curves

import graphprune as gp
from graphprune.planning.importance import class_scores
from graphprune.posttrain import greedy_obs
from graphprune.posttrain.compensation import compensated_model, least_squares
from graphprune.posttrain.criteria import OUTPUT_AWARE, calibrated_scores
from graphprune.posttrain.damping import FOLDS, choose_damp, residual_error
from graphprune.posttrain.statistics import collect, find_consumers
from graphprune.recovery.fisher import output_sensitivity

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def texts(calib: int, held_out: int, long: int, kinds=("docstrings",)) -> dict[str, list[str]]:
    """The calibration sentences (`calib` split evenly over `kinds`) and the evaluation
    sets: held-out sentences of every kind (disjoint from the calibration ones) and long
    passages of another kind (and length): reference text, or licences when the reference
    is calibrated on."""
    sets: dict[str, list[str]] = {"calib": []}
    for kind in text_corpus.KINDS:
        if kind in kinds:
            share = calib // len(kinds) + (kinds.index(kind) < calib % len(kinds))
            part, sets[_NAMES[kind]] = text_corpus.split(kind, [share, held_out], seed=0)
            sets["calib"] += part
        else:
            (sets[_NAMES[kind]],) = text_corpus.split(kind, [held_out], seed=0)
    other = next((k for k in ("reference", "licenses", "docstrings") if k not in kinds), None)
    if other is None:
        raise SystemExit("--calib-kinds: leave one kind out for the held-out sets")
    sets["long"] = text_corpus.paragraphs(other, long, words=120, seed=0)
    return sets


_NAMES = {"docstrings": "docs", "licenses": "licenses", "reference": "reference"}


def tokenize(tokenizer, batch: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS,
                    return_tensors="np")  # fmt: skip
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def feeds(tokenizer, sentences: list[str], size: int = 32) -> list[dict[str, np.ndarray]]:
    return [tokenize(tokenizer, sentences[i : i + size]) for i in range(0, len(sentences), size)]


def write_calibration(tokenizer, sentences: list[str], folder: Path, layout: str) -> None:
    folder.mkdir()
    if layout == "padded":
        np.savez(folder / "calib.npz", **tokenize(tokenizer, sentences))
        return
    by_length: dict[int, list[np.ndarray]] = {}
    for text in sentences:
        ids = tokenize(tokenizer, [text])["input_ids"][0]
        by_length.setdefault(len(ids), []).append(ids)
    for length, rows in sorted(by_length.items()):
        ids = np.stack(rows)
        np.savez(folder / f"len{length:03d}.npz", input_ids=ids, attention_mask=np.ones_like(ids))


def parse_damp(text: str) -> float | str:
    return text if text == "auto" else float(text)


def layer_errors(analysis, plan, stats, held: dict, damps) -> list[tuple]:
    """Per damp: the relative reconstruction error of every MLP consumer (mean over the
    layers) on the calibration statistics, on its k-fold held-out split, and on the
    statistics of each evaluation set."""
    keep_atom = plan.keep_atom(analysis)
    view = analysis.view
    rows = []
    for damp in damps:
        cells: dict[str, list[float]] = {}
        for consumer in stats.consumers:
            kept = keep_atom[consumer.positions.ravel()]
            weight = view.constant(view.nodes[consumer.node].input[1]).astype(np.float64)
            moments = stats.features(consumer)
            choice = choose_damp(stats.folds[consumer.feature_key], weight, kept)
            chosen = choice.damp if damp == "auto" else damp
            delta, shift = least_squares(moments.covariance, moments.mean, weight, kept, chosen)
            cells.setdefault("calib", []).append(
                residual_error(moments, weight, kept, delta, shift)
            )
            index = choice.candidates.index(chosen) if chosen in choice.candidates else None
            cells.setdefault("k-fold", []).append(
                choice.errors[index] if index is not None else np.nan
            )
            for name, other in held.items():
                cells.setdefault(name, []).append(
                    residual_error(other.features(consumer), weight, kept, delta, shift)
                )
        rows.append((damp, {k: float(np.mean(v)) for k, v in cells.items()}))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="l2 and flap, fewer damps")
    parser.add_argument("--exporter", choices=("classic", "dynamo"), default="dynamo")
    parser.add_argument("--layout", choices=("padded", "by-length"), default="padded")
    parser.add_argument("--mask", default="auto", help="CalibrationData.mask (none: count pads)")
    parser.add_argument("--calib", type=int, default=128, help="calibration sentences")
    parser.add_argument("--held-out", type=int, default=300, help="sentences per held-out set")
    parser.add_argument("--long", type=int, default=64, help="long passages")
    criteria = ["l2", "activation", "wanda", "flap", "obs"]
    parser.add_argument("--criteria", nargs="+", default=criteria,
                        help="NAME or NAME:global (ranked across the layers, --global)")
    parser.add_argument("--select-damp", type=float, default=greedy_obs.SELECT_DAMP,
                        help="obs-greedy: the damping of H while choosing")  # fmt: skip
    parser.add_argument("--damps", nargs="+", type=parse_damp, default=[0.01, 0.1, 1.0, "auto"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument(
        "--calib-kinds",
        nargs="+",
        default=["docstrings"],
        choices=text_corpus.KINDS,
        help="text kinds calibrated on (mixed)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["none", "bias", "lsq"],
        choices=("none", "bias", "lsq"),
        help="compensations to compare",
    )
    parser.add_argument(
        "--errors", action="store_true",
        help="per-layer reconstruction error on calibration vs held-out statistics",
    )  # fmt: skip
    parser.add_argument("--fold", nargs="+", default=[], metavar="METHOD[:METRIC]",
                        help="also fold the MLPs (tools/fold_mlp.py): kmeans or pairs, "
                        "metric pre or post; at each --damps value (lsq in --methods)")  # fmt: skip
    parser.add_argument("--sequential", action="store_true", help="layer-by-layer statistics")
    parser.add_argument(
        "--allocation", nargs="+", default=["uniform"],
        choices=("uniform", "global", "output", "measured"),
        help="per layer: every MLP at --ratio; all ranked together (normalization none); "
        "by the output cost curves of the layers (tools/output_allocation.py); by the "
        "measured embedding sensitivities (the same as NAME:SCOPE in --criteria)",
    )  # fmt: skip
    parser.add_argument("--projections", type=int, default=1, help="fisher: random outputs")
    parser.add_argument("--pooled", action="store_true",
                        help="fisher: project the sequence sum (the pooled embedding)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.criteria, args.damps = ["l2", "flap"], [0.01, "auto"]
    greedy_obs.SELECT_DAMP = args.select_damp
    started = time.perf_counter()
    sets = texts(args.calib, args.held_out, args.long, tuple(args.calib_kinds))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = export(folder / "minilm.onnx", args.exporter)
        model = gp.load(folder / "minilm.onnx")
        write_calibration(tokenizer, sets["calib"], folder / "calib", args.layout)
        evaluation = {name: feeds(tokenizer, sentences) for name, sentences in sets.items()}
        dense = {name: embed(model, f) for name, f in evaluation.items()}

        analysis = gp.analyze(model)
        mlp = [g for g in analysis.prunable_groups if g.kind == "mlp"]
        data = gp.CalibrationData(path=str(folder / "calib"), mask=args.mask)
        consumers = find_consumers(analysis, [g.id for g in mlp])
        mlps, inputs = fold_mlp.find_mlps(analysis), []
        t0 = time.perf_counter()
        stats = collect(analysis, data, consumers=consumers, batch=32, scatter=True, folds=FOLDS)
        calib_s = time.perf_counter() - t0
        if {c.partition(":")[0] for c in args.criteria} & set(OUTPUT_AWARE):
            t0 = time.perf_counter()
            output_sensitivity(analysis, data, stats, batch=32, projections=args.projections,
                               shared_axes=(1,) if args.pooled else ())  # fmt: skip
            print(f"output gradients (fisher, {args.projections} projection(s)): "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        summary = stats.summary()
        padding = summary.get("padding_positions", 0)
        tokens = {
            name: int(sum(f["attention_mask"].sum() for f in fs)) for name, fs in evaluation.items()
        }
        print(f"MiniLM-L6 ({args.exporter} export): {len(mlp)} MLP groups, ratio {args.ratio}; "
              f"calibration {args.layout}: {stats.samples} sentences, {calib_s:.1f} s, "
              f"padding mask {stats.mask} ({padding} padding positions left out)")  # fmt: skip
        for name, sentences in sets.items():
            print(f"  {name:<10} {len(sentences):>4} texts {tokens[name]:>6} tokens "
                  f"(sha {text_corpus.fingerprint(sentences)})")  # fmt: skip
        names = list(sets)
        head = " ".join(f"{n:>15}" for n in names)
        print("\nembedding cosine vs the dense model, mean and min per set")
        print(f"{'criterion':<18} {'compensate':<16} {head}")
        plans, widths = {}, {}
        runs = dict.fromkeys(  # each criterion under each allocation, in order, once
            c if ":" in c or a == "uniform" else f"{c}:{a}"
            for c in args.criteria for a in args.allocation
        )
        for criterion in runs:
            name, _, scope = criterion.partition(":")
            t0 = time.perf_counter()
            if scope == "measured":  # sensitivities from the calibration embedding
                plan = measured_plan(analysis, stats, mlp, name, args.ratio,
                                     evaluation["calib"], dense["calib"])  # fmt: skip
            elif scope == "output":  # the layers' output cost curves
                plan = output_plan(analysis, mlp, stats, name, args.ratio)
            else:
                together = scope == "global"
                options = gp.PlanOptions(ratio=args.ratio, criterion=name, only=("mlp",),
                                         global_ranking=together,
                                         normalization="none" if together else None)  # fmt: skip
                plan = gp.plan(analysis, options, stats=stats)
            plans[criterion] = plan
            kept = {c.group: len(c.kept) for c in plan.choices}
            widths[criterion] = (" ".join(str(kept.get(g.id, g.channels)) for g in mlp),
                                 time.perf_counter() - t0)  # fmt: skip
            variants = [(m, 0.0) for m in args.methods if m != "lsq"]
            if "lsq" in args.methods:
                variants += [("lsq", d) for d in args.damps]
            for method, damp in variants:
                damping: list[dict] = []
                pruned = gp.compensate(analysis, plan, stats, method=method, damp=damp,
                                       damping=damping)  # fmt: skip
                cells = []
                for name in names:
                    cosine = (embed(pruned, evaluation[name]) * dense[name]).sum(1)
                    cells.append(f"{cosine.mean():>7.4f} {cosine.min():>7.4f}")
                label = method if method != "lsq" else f"lsq {damp}"
                chosen = " ".join(_short(c["damp"]) for c in damping)  # auto, per layer
                print(f"{criterion:<18} {label:<16} " + " ".join(cells) + f"  {chosen}".rstrip())
        for spec in args.fold:  # neurons merged instead of removed (tools/fold_mlp.py)
            method, _, metric = spec.partition(":")
            t0 = time.perf_counter()
            if not inputs:
                inputs.extend(fold_mlp.capture(model, mlps, evaluation["calib"]))
            for damp in args.damps if "lsq" in args.methods else [None]:
                folded, layers = fold_mlp.fold_model(model, mlps, inputs, args.ratio,
                                                     method=method, metric=metric or "pre",
                                                     damp=damp)  # fmt: skip
                cells = []
                for name in names:
                    cosine = (embed(folded, evaluation[name]) * dense[name]).sum(1)
                    cells.append(f"{cosine.mean():>7.4f} {cosine.min():>7.4f}")
                label = "sum" if damp is None else f"lsq {damp}"
                chosen = " ".join(_short(f.damp) for f in layers) if damp == "auto" else ""
                row = f"{'fold ' + spec:<18} {label:<16} " + " ".join(cells)
                print(row + f"  {chosen}".rstrip())
            error = np.mean([f.error for f in layers])
            widths[f"fold {spec}"] = (" ".join(str(len(f.up_bias)) for f in layers),
                                      time.perf_counter() - t0)  # fmt: skip
            print(f"  (fold {spec}: k-fold relative error of the re-fit {error:.4f}; clusters "
                  "of one neuron per layer: " + " ".join(str((f.sizes == 1).sum()) for f in layers)
                  + "; largest: " + " ".join(str(f.sizes.max()) for f in layers) + ")")
        if args.fold:  # how far each neuron is from being a duplicate of another
            inits = {i.name: i for i in model.graph.initializer}
            print("  nearest other neuron (RMS activation distance / RMS activation), median "
                  "and share < 0.3 per layer: " + ", ".join(
                      f"{np.median(r):.3f} {np.mean(r < 0.3):.3f}" for r in (
                          fold_mlp.nearest(x, *(numpy_helper.to_array(inits[n]).astype(float)
                                                for n in (m.up_weight, m.up_bias)))
                          for m, x in zip(mlps, inputs, strict=True))))  # fmt: skip
        if args.fold and "lsq" in args.methods:  # the same error for the plans' kept neurons
            for criterion, plan in plans.items():
                atoms = plan.keep_atom(analysis)  # per consumer, its weight's kept rows
                kept = [atoms[c.positions.ravel()] for c in consumers]
                error = fold_mlp.pruned_error(mlps, model, inputs, kept, "auto")
                print(f"  ({criterion} kept, the same re-fit at auto: k-fold error {error:.4f})")
        print("\nMLP widths kept per layer (and the plan's time)")
        for criterion, (kept, seconds) in widths.items():
            print(f"{criterion:<20} {kept}  ({seconds:.1f} s)")
        if args.errors:
            held = {}
            for name, path in _held_out_files(tokenizer, sets, folder).items():
                source = gp.CalibrationData(path=str(path))
                held[name] = collect(analysis, source, consumers=consumers, scatter=True)
            criterion = args.criteria[-1]
            print(f"\nrelative reconstruction error of the MLP down-projections ({criterion}, "
                  "lsq; mean of the 6 layers; 1.0 = no repair)")  # fmt: skip
            columns = ["calib", "k-fold", *held]
            print(f"{'damp':<8} " + " ".join(f"{c:>10}" for c in columns))
            for damp, cells in layer_errors(analysis, plans[criterion], stats, held, args.damps):
                print(f"{damp!s:<8} " + " ".join(f"{cells[c]:>10.4f}" for c in columns))
        if args.sequential:
            criterion, damp = args.criteria[-1], args.damps[0]
            print(f"\nsequential calibration ({criterion}, lsq {damp}): after each layer")
            pruned = model
            for index, cells in sequential(pruned, data, args.ratio, criterion, damp):
                scores = []
                for name in names:
                    cosine = (embed(cells, evaluation[name]) * dense[name]).sum(1)
                    scores.append(f"{cosine.mean():>7.4f} {cosine.min():>7.4f}")
                print(f"{'layer ' + str(index):<28} " + " ".join(scores))
        print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


MEASURE_FRACTIONS = (0.25, 0.5, 0.75)


def measured_plan(analysis, stats, mlp, criterion: str, ratio: float, feeds, dense):
    """`ratio` of all MLP channels removed, shared between the layers by their measured
    effect on the embedding: each layer pruned alone (lowest scores first, lsq auto) at
    MEASURE_FRACTIONS, distortion d = mean(1 - cosine) on the calibration sentences; with
    E(k) the layer's relative error path (the cumulated sorted scores, obs-greedy's hull),
    the fit d ~ alpha E gives the layer's sensitivity alpha, and alpha x score ranked over
    all layers (`PlanOptions.group_weights`, --global) is the marginal-embedding-cost
    allocation."""
    scores, _ = class_scores(analysis, criterion, "mean", "none", 0, stats)
    alphas = {}
    for group in mlp:
        values = scores[group.classes]
        order = np.argsort(values, kind="stable")  # removal order
        path = np.cumsum(values[order])
        fitted = []
        for fraction in MEASURE_FRACTIONS:
            k = round(fraction * group.channels)
            plan = _plan_removing(analysis, {group.id: order[:k]})
            pruned = gp.compensate(analysis, plan, stats, method="lsq", damp="auto")
            distortion = 1.0 - float((embed(pruned, feeds) * dense).sum(1).mean())
            fitted.append((path[k - 1], distortion))
        e, d = np.array(fitted).T
        alphas[group.name] = float((e * d).sum() / (e * e).sum())
        print(f"  {group.name}: alpha {alphas[group.name]:.4g} (E, d: "
              + ", ".join(f"{a:.3g} {b:.3g}" for a, b in fitted) + ")")  # fmt: skip
    options = gp.PlanOptions(ratio=ratio, criterion=criterion, only=("mlp",), normalization="none",
                             global_ranking=True, group_weights=alphas)  # fmt: skip
    return gp.plan(analysis, options, stats=stats)


def _plan_removing(analysis, removed: dict) -> object:
    groups = [analysis.groups[g] for g in removed]
    return gp.plan_from_json(analysis, {"groups": [
        {"name": g.name, "sources": g.sources, "channels": g.channels,
         "removed": sorted(int(i) for i in removed[g.id])} for g in groups
    ]})  # fmt: skip


def sequential(model, data, ratio: float, criterion: str, damp):
    """Yield (layer, model) with MLP layers 0..layer pruned one at a time: each layer's
    statistics come from the model whose earlier layers are already pruned (their removed
    channels masked, the oracle of the rewrite) and repaired."""
    record: dict = {"groups": []}
    for index in range(len(_mlp(gp.analyze(model)))):
        analysis = gp.analyze(model)
        group = _mlp(analysis)[index]
        consumers = find_consumers(analysis, [group.id])
        folds = FOLDS if damp == "auto" else 0
        stats = collect(analysis, data, consumers=consumers, batch=32, scatter=True, folds=folds)
        options = gp.PlanOptions(ratio=ratio, criterion=criterion, only=("mlp",))
        chosen = next(c for c in gp.plan(analysis, options, stats=stats).choices
                      if c.group == group.id)  # fmt: skip
        entry = {"name": group.name, "sources": group.sources, "channels": group.channels,
                 "removed": chosen.removed}  # fmt: skip
        plan = gp.plan_from_json(analysis, {"groups": [entry]})
        dense, _ = compensated_model(analysis, plan.keep_atom(analysis), stats, method="lsq",
                                     damp=damp)  # fmt: skip
        again = gp.analyze(dense)
        record["groups"].append(entry)
        model = gp.mask(again, gp.plan_from_json(again, record))
        yield index, model


def output_plan(analysis, groups, stats, criterion: str, ratio: float, step: int = 64):
    """Each layer's removal count from the output cost curves, its lowest-scored channels."""
    scores = calibrated_scores(analysis, stats, criterion)
    curves = cost_curves(analysis, stats, groups, scores, step=step)
    total = int(sum(g.channels for g in groups) * ratio)
    counts = allocate(curves, total, step)
    entries = []
    for group in groups:
        order = np.argsort(scores[group.classes], kind="stable")
        entries.append({"name": group.name, "sources": group.sources, "channels": group.channels,
                        "removed": sorted(order[: counts[group.id]].tolist())})  # fmt: skip
    return gp.plan_from_json(analysis, {"groups": entries})


def _mlp(analysis) -> list:
    return [g for g in analysis.prunable_groups if g.kind == "mlp"]


def _short(damp) -> str:
    return damp if isinstance(damp, str) else f"{damp:g}"


def _held_out_files(tokenizer, sets: dict[str, list[str]], folder: Path) -> dict[str, Path]:
    """Each evaluation set but the calibration one as a padded calibration NPZ."""
    found = {}
    for name, sentences in sets.items():
        if name != "calib":
            found[name] = folder / f"{name}.npz"
            np.savez(found[name], **tokenize(tokenizer, sentences))
    return found


if __name__ == "__main__":
    sys.exit(main())
