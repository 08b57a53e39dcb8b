"""`graphprune sweep MODEL -o SWEEP.json [--html PARETO.html]`: prune at every ratio and
latency target with every criterion, score each result, and chart quality against
latency, parameters and MACs.

Configurations run in a local process pool (`--jobs`), or on an existing Ray cluster
(`--ray ADDRESS`, the optional extra `ray`; the driver's graphprune is shipped to the
workers). Workers prune and score; the driver then times every pruned model alternately
with the original, one at a time, so that parallel workers do not disturb the timings.
Quality is the mean cosine similarity of the outputs to the original's on the validation
inputs (`--inputs`, or seeded random ones), or the number `--eval CMD` prints last for
each model (written to a temporary file that is removed afterwards).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import multiprocessing
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..api import analyze, load
from ..core.metrics import count_macs, count_params
from ..errors import GraphpruneError, first_line
from ..inspect.pareto import pareto_html
from ..io.saving import save_model, write_text_atomically
from ..pipeline import CalibrationOptions, PruneOptions, prune_model
from ..planning.budget import Budget
from ..planning.importance import CRITERIA
from ..planning.plan import PlanOptions
from ..planning.target import LatencyTarget
from ..posttrain.compensation import METHODS
from ..posttrain.criteria import CALIBRATED
from ..recovery.options import FinetuneOptions
from ..runtime.inputs import check_given_shapes, load_inputs
from ..runtime.latency import bench
from ..runtime.probe import check_inputs, choose_inputs
from ..runtime.profile import LatencyTable, ProfileOptions, machine_id, profile
from ..runtime.sessions import DEFAULT_RUN_TIMEOUT_S, limit_runs, run, session
from ..version import __version__
from .common import (
    RUN_TIMEOUT_HELP,
    check_number,
    check_outputs,
    parse_shapes,
    read_json,
    write_all,
)
from .profile import _profile_options, add_timing_options


@dataclass(frozen=True)
class Config:
    """One point of the sweep: a criterion with a ratio or a latency target."""

    criterion: str
    ratio: float | None = None
    target_latency: float | None = None

    @property
    def label(self) -> str:
        what = f"ratio {self.ratio:g}" if self.ratio is not None else (
            f"latency {self.target_latency:g}")  # fmt: skip
        return f"{self.criterion}, {what}"


@dataclass(frozen=True)
class Shared:
    """What every configuration needs besides its own point."""

    calibration: CalibrationOptions
    compensate: str
    shapes: dict[str, tuple[int, ...]]
    feeds: dict[str, np.ndarray]
    table: LatencyTable | None  # None: each worker profiles its own machine (Ray)
    profile: ProfileOptions
    repeats: int
    run_timeout: float
    recover: int | None = None  # distillation steps after each prune (graphprune.recovery)


def add_parser(commands) -> None:
    p = commands.add_parser("sweep", help="prune at many ratios/latency targets; Pareto chart")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="write the JSON table here")
    p.add_argument("--html", metavar="PARETO.html", help="write the Pareto chart here")
    p.add_argument("--ratios", type=float, nargs="+", default=[], metavar="R")
    p.add_argument("--target-latency", type=float, nargs="+", default=[], metavar="F")
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=["l2"])
    p.add_argument("--calib", metavar="NPZ_OR_DIR", help="calibration samples (as prune)")
    p.add_argument("--calib-random", type=int, metavar="N")
    p.add_argument("--compensate", choices=METHODS, default="none")
    p.add_argument(
        "--recover", type=int, metavar="STEPS",
        help="distil each pruned model towards the original for STEPS steps on the "
        "calibration data before it is scored and timed (needs torch)",
    )  # fmt: skip
    p.add_argument(
        "--eval", metavar="CMD",
        help="scores a pruned model: {model} becomes its path (else appended); the last line "
        "it prints is the score, higher is better (default: output cosine to the original)",
    )  # fmt: skip
    p.add_argument("--inputs", help="NPZ of validation inputs, keyed by input name")
    p.add_argument("--input-shape", nargs="+", default=[], metavar="NAME=D,D,...")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes")
    p.add_argument("--ray", metavar="ADDRESS", help="run on this Ray cluster (pip: ray)")
    p.add_argument("--latency-table", metavar="TABLE.json", help="from `graphprune profile`")
    add_timing_options(p)
    p.add_argument(
        "--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT_S, help=RUN_TIMEOUT_HELP
    )
    p.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    check_outputs(
        {"-o": args.output, "--html": args.html}, [args.model],
        {"--calib": args.calib, "--inputs": args.inputs, "--latency-table": args.latency_table},
    )  # fmt: skip
    for value in [*args.ratios, *args.target_latency]:
        check_number("--ratios/--target-latency", value, 0.0, 0.99)
    check_number("--jobs", args.jobs, 1, 256)
    limit_runs(args.run_timeout)
    options = _profile_options(args)
    check_number("--recover", args.recover, 1)
    calibrated = any(c in CALIBRATED for c in args.criteria) or args.compensate != "none"
    if (calibrated or args.recover) and args.calib is None and args.calib_random is None:
        raise GraphpruneError(
            "calibrated criteria, --compensate and --recover need --calib or --calib-random"
        )
    ratios = args.ratios or ([] if args.target_latency else [0.25, 0.5])
    configs = [Config(c, ratio=r) for c, r in itertools.product(args.criteria, ratios)]
    configs += [Config(c, target_latency=t)
                for c, t in itertools.product(args.criteria, args.target_latency)]  # fmt: skip
    model = load(args.model)
    given = parse_shapes(args.input_shape)
    check_given_shapes(model, given)
    probed = (check_inputs(model, load_inputs(args.inputs), args.inputs) if args.inputs
              else choose_inputs(model, given, 0))  # fmt: skip
    table = None  # with --ray and no table, each worker profiles the machine it runs on
    if args.latency_table:
        data = read_json(args.latency_table, "latency table")
        table = LatencyTable.from_json(data, args.latency_table)
        if not args.ray:  # checked here; on Ray, where it runs
            LatencyTarget(fraction=0.5, profile=options, table=table,
                          table_source=args.latency_table).resolve_table(
                analyze(model), probed.shapes, probed.feeds)  # fmt: skip
    elif args.target_latency and not args.ray:
        table = profile(analyze(model), probed.shapes, probed.feeds, options)
    shared = Shared(
        CalibrationOptions(path=args.calib, random=args.calib_random), args.compensate,
        probed.shapes, probed.feeds, table, options,
        max(2 * options.repeats, 10), args.run_timeout, args.recover,
    )  # fmt: skip
    results = _dispatch(model.SerializeToString(), configs, shared, args.jobs, args.ray)
    runs = _measure(model, results, shared, options, args.eval)
    sweep = {
        "graphprune": __version__,
        "model": str(args.model),
        "quality": (f"--eval {args.eval}" if args.eval else "output cosine to the original")
        + (f", after {args.recover} steps of recovery" if args.recover else ""),
        "latency_on": f"{options.provider}, {options.resolved_threads} threads, {machine_id()}",
        "runs": runs,
    }
    text = json.dumps(sweep, indent=1, sort_keys=True) + "\n"
    writes = [(args.output, lambda: write_text_atomically(args.output, text))]
    if args.html:
        page = pareto_html(sweep)
        writes.append((args.html, lambda: write_text_atomically(args.html, page)))
    write_all(writes)
    failed = sum(1 for r in runs if r["error"])
    print(f"swept {len(configs)} configurations -> {args.output}"
          + (f" ({failed} failed)" if failed else ""))  # fmt: skip
    for r in runs:
        quality = "-" if r["quality"] is None else f"{r['quality']:.4f}"
        latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f} ms"
        error = f"  error: {r['error']}" if r["error"] else ""
        kept = "-" if r["macs_kept"] is None else f"{r['macs_kept']:.3f}"
        print(f"  {r['label']:<28} quality {quality:>8}  latency {latency:>11}  ", end="")
        print(f"MACs kept {kept}{error}")
    return 0


def prune_config(model: bytes, config: Config, shared: Shared) -> dict:
    """Prune one configuration (in a worker): the pruned model's bytes and its scores, or
    the one-line reason it failed."""
    limit_runs(shared.run_timeout)
    proto = onnx.load_from_string(model)
    latency = None
    if config.target_latency is not None:
        latency = LatencyTarget(
            fraction=config.target_latency, table=shared.table, profile=shared.profile,
            repeats=shared.repeats,
        )  # fmt: skip
    plan = PlanOptions(ratio=config.ratio or 0.0, criterion=config.criterion,
                       budget=Budget("latency", 1.0) if latency else None)  # fmt: skip
    recover = FinetuneOptions(steps=shared.recover) if shared.recover else None
    options = PruneOptions(
        model=proto, plan=plan, calibration=shared.calibration, compensate=shared.compensate,
        input_shapes=shared.shapes, latency=latency, recover=recover,
    )  # fmt: skip
    try:
        result = prune_model(options)
    except GraphpruneError as error:
        return {"config": config, "error": first_line(error), "model": None}
    report = result.report
    return {
        "config": config, "error": None, "model": result.model.SerializeToString(),
        "max_rel_deviation": max((o["max_rel"] or 0.0 for o in report["validation"]["outputs"]),
                                 default=0.0),
        "latency_target": report.get("latency"),
        "recovery": report.get("recovery"),
    }  # fmt: skip


def _dispatch(model: bytes, configs: list[Config], shared: Shared, jobs: int,
              ray_address: str | None) -> list[dict]:  # fmt: skip
    if ray_address:
        return _on_ray(ray_address, model, configs, shared)
    if jobs == 1:
        return [prune_config(model, c, shared) for c in configs]
    context = multiprocessing.get_context("spawn")  # onnxruntime's threads do not fork
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(prune_config, itertools.repeat(model), configs,
                             itertools.repeat(shared)))  # fmt: skip


def _on_ray(address: str, model: bytes, configs: list[Config], shared: Shared) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise GraphpruneError("--ray needs Ray: pip install 'graphprune[ray]'") from None
    package = str(Path(__file__).resolve().parents[1])  # this graphprune, shipped to workers
    try:
        ray.init(address=address, runtime_env={"py_modules": [package]},
                 log_to_driver=False, logging_level="ERROR")  # fmt: skip
    except Exception as error:  # any failure to connect is the user's address or cluster
        raise GraphpruneError(f"cannot connect to Ray at {address}: {first_line(error)}") from None
    try:
        task = ray.remote(prune_config)
        model_ref, shared_ref = ray.put(model), ray.put(shared)
        return ray.get([task.remote(model_ref, c, shared_ref) for c in configs])
    finally:
        ray.shutdown()


def _measure(original: onnx.ModelProto, results: list[dict], shared: Shared, options,
             command: str | None) -> list[dict]:  # fmt: skip
    """Latency (one model at a time, alternated with the original), size and quality."""
    shapes, feeds = shared.shapes, shared.feeds
    reference = run(session(original, "CPUExecutionProvider"), feeds)
    params, macs = count_params(original), count_macs(original, shapes)
    with tempfile.TemporaryDirectory(prefix="graphprune-sweep-") as folder:
        baseline = _score(original, reference, feeds, command, Path(folder))
        if baseline is None and command:
            raise GraphpruneError(f"--eval {command!r} printed no number for the original model")
        runs = [{
            "label": "original", "criterion": None, "ratio": None, "target_latency": None,
            "error": None, "quality": baseline, "latency_ms": None, "latency_fraction": 1.0,
            **_sizes(original, shapes, params, macs),
        }]  # fmt: skip
        for result in results:
            config = result["config"]
            row = {"label": config.label, "criterion": config.criterion, "ratio": config.ratio,
                   "target_latency": config.target_latency, "error": result["error"]}  # fmt: skip
            if result["model"] is None:
                runs.append({**row, "quality": None, "latency_ms": None, "params": None,
                             "macs": None, "params_kept": None, "macs_kept": None})  # fmt: skip
                continue
            pruned = onnx.load_from_string(result["model"])
            timing = bench(original, pruned, feeds, shared.repeats, options.provider,
                           options.resolved_threads, timing=options.timing)  # fmt: skip
            runs[0]["latency_ms"] = runs[0]["latency_ms"] or timing["latency_ms_before"]
            quality = _score(pruned, reference, feeds, command, Path(folder))
            runs.append({
                **row, "quality": quality, "latency_ms": timing["latency_ms_after"],
                "latency_fraction": timing["paired_fraction"],
                "max_rel_deviation": result["max_rel_deviation"],
                "latency_target": result["latency_target"],
                **({"recovery": _recovery_row(result["recovery"])} if result["recovery"] else {}),
                **_sizes(pruned, shapes, params, macs),
            })  # fmt: skip
    return runs


def _recovery_row(recovery: dict) -> dict:
    return {key: recovery[key] for key in ("steps", "loss_before", "loss_after",
                                           "deviation_before", "deviation_after", "train_s")}


def _sizes(model, shapes, params, macs) -> dict:
    p, m = count_params(model), count_macs(model, shapes)
    return {"params": p, "macs": m, "params_kept": round(p / params, 6) if params else 1.0,
            "macs_kept": round(m / macs, 6) if macs else 1.0}  # fmt: skip


def _score(model, reference, feeds, command: str | None, folder: Path) -> float | None:
    if command is None:
        outputs = run(session(model, "CPUExecutionProvider"), feeds)
        cosines = [_cosine(a, b) for a, b in zip(reference, outputs, strict=True)]
        mean = float(np.mean(cosines))
        return round(mean, 6) if np.isfinite(mean) else None
    path = folder / "model.onnx"
    save_model(model, str(path))
    words = shlex.split(command)
    words = [w.replace("{model}", str(path)) for w in words] if "{model}" in command else [
        *words, str(path)]  # fmt: skip
    try:
        done = subprocess.run(words, capture_output=True, text=True, check=False, timeout=3600)
    except OSError as error:
        raise GraphpruneError(f"--eval cannot run {words[0]!r}: {error.strerror}") from None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        return float(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.shape != b.shape:  # a pruned output (--prune-outputs is not a sweep option)
        return float("nan")
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
