"""graphprune side by side with onnxsim 0.8.x on the structures beyond width: whole experts,
expert MLP widths and depth (issue 11). `tools/bench_onnxsim.py` compares widths and heads.

Rows:

* ``experts``: 25% of every MoE layer's experts removed. graphprune ``--only experts``
  (magnitude without data, and calibrated EASY-EP scores on 16 random sequences, or 256
  random tokens for the onnxruntime-op models, which are also judged on 256 tokens); onnxsim
  ``apply_moe_whole_expert_pruning`` (as many random calibration samples of its own).
* ``expert-mlp``: 30% of the experts' MLP width. graphprune ``--only mlp`` on the groups
  inside MoE layers; onnxsim ``apply_moe_expert_channel_pruning``.
* ``depth``: one residual branch dropped (graphprune ``--drop-blocks 1 --block-unit branch``
  by Block Influence on 8 random samples; onnxsim ``apply_transformer_block_pruning`` with
  ``num_blocks_to_drop=1`` on its own 8).

Models: the MoE test models of ``models/moe_zoo.py`` (transformers' Qwen2-MoE, Qwen3-MoE and
Mixtral sparse blocks and language models, batched experts, both exporters; onnxruntime's
com.microsoft MoE op) and, for depth, the transformers of ``models/transformers_zoo.py``
(post-norm BERT and MiniLM, pre-norm GPT-2, LLaMA, ViT).

Columns per tool: weight bytes removed (initializers no node reads left out: onnxsim's
block removal leaves them behind), or what it said, whether the pruned model runs with
the original's output shapes, the output cosine against the dense model on a seeded random
input, and exactness:

* graphprune: its own oracle (``gp.mask``: removed experts' router logits at -inf, removed
  widths zeroed, a dropped branch zeroed).
* onnxsim, depth: whether its output equals the original with *one* of the residual branches
  graphprune finds zeroed ("= branch k"; "no branch" when it equals none of them).
* onnxsim, experts: which experts it removed is not recoverable from its output, so only
  the cosine is given.

    python tools/bench_onnxsim_structure.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "tools"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from bench_onnxsim import TOLERANCE, deviation, run, strip_unused, weight_bytes  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.runtime.inputs import input_shapes, random_inputs  # noqa: E402

DEPTH_MODELS = [("bert", "classic"), ("minilm", "classic"), ("gpt2", "dynamo"),
                ("llama", "dynamo"), ("vit", "dynamo")]  # fmt: skip


def cosine(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    a, b = expected[0].astype(np.float64).ravel(), actual[0].astype(np.float64).ravel()
    if a.shape != b.shape:
        return float("nan")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def quiet(call, *args, **kwargs):
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return call(*args, **kwargs)


def describe(model, pruned, feeds, dense) -> tuple[str, str, str]:
    """(removed, runs, cosine) of a pruned model (its unread weights left out)."""
    pruned = strip_unused(pruned)
    if weight_bytes(pruned) >= weight_bytes(model) and len(pruned.graph.node) >= len(
        model.graph.node
    ):
        return "nothing", "", ""
    removed = f"{1 - weight_bytes(pruned) / weight_bytes(model):.1%}"
    try:
        outputs = run(pruned, feeds)
    except Exception as error:
        return removed, f"no: {str(error).splitlines()[0][:40]}", ""
    if any(e.shape != a.shape for e, a in zip(dense, outputs, strict=True)):
        return removed, "shape changed", ""
    return removed, "yes", f"{cosine(dense, outputs):.4f}"


def graphprune_side(model, feeds, dense, options: gp.PlanOptions, *, blocks=None, calib=0):
    """(removed, runs, cosine, oracle) of graphprune with these plan options."""
    try:
        analysis = gp.analyze(gp.load(model), blocks=blocks)
        stats = None
        if calib:
            shapes = {name: tuple(shape[1:]) for name, shape in input_shapes(model).items()}
            data = gp.CalibrationData(random=calib, shapes=shapes)
            stats = quiet(gp.calibrate, analysis, data, blocks=blocks is not None)
        plan = gp.plan(analysis, options, stats=stats)
        pruned = gp.prune(analysis, plan)
    except gp.GraphpruneError as error:
        return f"error: {str(error)[:40]}", "", "", ""
    removed, runs, cos = describe(model, pruned, feeds, dense)
    if removed == "nothing":
        return removed, "", "", ""
    oracle = deviation(run(gp.mask(analysis, plan), feeds), run(pruned, feeds))
    return removed, runs, cos, f"{'ok' if oracle < TOLERANCE else 'WRONG'} {oracle:.1e}"


def onnxsim_side(model, feeds, dense, call, **kwargs):
    try:
        pruned = quiet(call, onnx.ModelProto.FromString(model.SerializeToString()), **kwargs)
    except Exception as error:
        return f"error: {type(error).__name__}: {str(error)[:30]}", "", "", None
    return (*describe(model, pruned, feeds, dense), pruned)


def branch_match(model, pruned, feeds) -> str:
    """Which residual branch, zeroed in the original, gives onnxsim's output."""
    analysis = gp.analyze(gp.load(model), blocks="branch")
    outputs = run(pruned, feeds)
    units = [g for g in analysis.groups if g.kind == "blocks"]
    for index, unit in enumerate(units):
        record = {"groups": [{"name": unit.name, "sources": unit.sources, "channels": 1,
                              "removed": [0]}]}  # fmt: skip
        masked = run(gp.mask(analysis, gp.plan_from_json(analysis, record)), feeds)
        if deviation(masked, outputs) < TOLERANCE:
            return f"= branch {index}"
    return "no branch"


def print_row(model, what, gp_row, sim_row, sim_exact="") -> None:
    print(f"{model:<24} {what:<10} | {gp_row[0]:<16.16} {gp_row[1]:<4.4} {gp_row[2]:<7} "
          f"{gp_row[3]:<13} | {sim_row[0]:<28.28} {sim_row[1]:<4.4} {sim_row[2]:<7} "
          f"{sim_exact}", flush=True)  # fmt: skip


def moe_rows() -> None:
    from onnxsim import pruning as p

    from models.moe_zoo import exports

    for name, exporter, load in exports():
        model = gp.load(load())
        shapes = input_shapes(model)
        if exporter == "ort-op":  # [tokens, hidden]: judge on 256 tokens, not one
            shapes = {n: (256, *s[1:]) for n, s in shapes.items()}
        feeds = random_inputs(model, shapes, 0)
        dense = run(model, feeds)
        label = f"{name} ({exporter})"
        calib_samples = 256 if exporter == "ort-op" else 16  # tokens, or sequences
        for criterion, calib in (("l2", 0), ("activation", calib_samples)):
            options = gp.PlanOptions(ratio=0.25, only=("experts",), criterion=criterion)
            print_row(
                label, f"experts{'+cal' if calib else ''}",
                graphprune_side(model, feeds, dense, options, calib=calib),
                onnxsim_side(model, feeds, dense, p.apply_moe_whole_expert_pruning,
                             sparsity=0.25, num_samples=calib_samples)[:3],
            )  # fmt: skip
        options = gp.PlanOptions(ratio=0.3, only=("mlp",))
        print_row(
            label, "expert-mlp", graphprune_side(model, feeds, dense, options),
            onnxsim_side(model, feeds, dense, p.apply_moe_expert_channel_pruning,
                         sparsity=0.3)[:3],
        )  # fmt: skip


def depth_rows() -> None:
    from onnxsim import pruning as p

    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    from models import transformers_zoo as tz

    for name, exporter in DEPTH_MODELS:
        model = gp.load(str(tz.cached(name, exporter)))
        feeds = random_inputs(model, input_shapes(model), 0)
        dense = run(model, feeds)
        options = gp.PlanOptions(drop_blocks=1, block_criterion="influence")
        ours = graphprune_side(model, feeds, dense, options, blocks="branch", calib=8)
        *theirs, pruned = onnxsim_side(model, feeds, dense, p.apply_transformer_block_pruning,
                                       num_blocks_to_drop=1, num_samples=8)  # fmt: skip
        exact = branch_match(model, pruned, feeds) if theirs[1] == "yes" else ""
        print_row(f"{name} ({exporter})", "depth", ours, theirs, exact)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["moe", "depth"])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import onnxsim

    print(f"graphprune {gp.__version__}, onnxsim {onnxsim.__version__}")
    print(f"{'model':<24} {'what':<10} | {'graphprune':<16} {'runs':<4} {'cosine':<7} "
          f"{'oracle':<13} | {'onnxsim':<28} {'runs':<4} {'cosine':<7} exact")  # fmt: skip
    if args.only in (None, "moe"):
        moe_rows()
    if args.only in (None, "depth"):
        depth_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
