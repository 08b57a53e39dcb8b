"""Expert importance from calibration data: how much of the block's output each expert
makes, in the manner of EASY-EP (Dong et al., "Domain-Specific Pruning of Large
Mixture-of-Experts Models with Few-shot Demonstrations", 2025): expert e scores

    sum over tokens t routed to e of  g(t, e) * ||E_e(x_t)||

with g the routing weight the router gave it and E_e(x_t) the expert's output for that
token, i.e. routing frequency x gate x output norm. Experts that are rarely picked, or
picked with little weight, or that add little when picked, go first.

What the graph offers decides the terms. The TopK over the experts gives the picks and
their weights (used as g only when they are softmax probabilities, otherwise every pick
counts 1); where the experts run as batched rows (transformers' export-friendly form: the
TopK's indices, reshaped in order, gather each row's weights from [E, ...] tables), the
last MatMul over such gathered weights gives row s's expert output, for the pick s.
onnxruntime's fused com.microsoft.MoE hides its expert outputs: there the score is the
gate mass (softmax of router_probs, summed over the top-k picks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.analysis import Analysis
from ..core.channels import SliceConstant

_TABLE_GATHERS = ("Gather", "GatherND")


@dataclass(frozen=True)
class RoutingTap:
    """One router's statistics: `indices` and `weights` (a TopK's outputs, or the fused
    MoE's router_probs when `fused`), and `rows`, each pick's expert output, when known."""

    router: str
    atoms: np.ndarray
    indices: str
    weights: str | None
    rows: str | None = None
    fused_k: int = 0

    @property
    def tensors(self) -> list[str]:
        return [t for t in (self.indices, self.weights, self.rows) if t]


def find_routing(analysis: Analysis, groups: set[int]) -> list[RoutingTap]:
    """A tap for every router whose experts belong to `groups`."""
    view = analysis.view
    taps = []
    for router, atoms in analysis.experts:
        group_ids = set(analysis.group_of_class[analysis.class_of[atoms]].tolist())
        if not group_ids & groups:
            continue
        node = view.nodes[router]
        if node.op_type in ("MoE", "QMoE"):  # router_probs is input 1 of both
            k = int(view.attribute(node, "k", 1))
            taps.append(RoutingTap(router, atoms, node.input[1], None, None, fused_k=k))
            continue
        weights = node.output[0] if _after_softmax(view, node.input[0]) else None
        taps.append(RoutingTap(router, atoms, node.output[1], weights, _rows(analysis, atoms)))
    return taps


def _after_softmax(view, tensor: str) -> bool:
    producer = view.producer(tensor)
    while producer is not None and producer.op_type == "Cast":
        producer = view.producer(producer.input[0])
    return producer is not None and producer.op_type == "Softmax"


def _rows(analysis: Analysis, atoms: np.ndarray) -> str | None:
    """The output of the last MatMul that multiplies by expert weights gathered with these
    experts' indices (the expert's down projection): row s is pick s's expert output."""
    view = analysis.view
    found = None
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant) or not np.array_equal(edit.atoms, atoms):
            continue
        node = view.nodes[edit.node]
        if node.op_type not in _TABLE_GATHERS:
            continue
        for consumer, _ in view.consumers(node.output[0]):
            if consumer.op_type == "MatMul" and (
                found is None or view.position[consumer.name] > view.position[found]
            ):
                found = consumer.name
    return None if found is None else view.nodes[found].output[0]


def routing_scores(tap: RoutingTap, values: dict[str, np.ndarray]) -> np.ndarray:
    """One batch's contribution to each expert's score (positions of `tap.atoms`)."""
    experts = tap.atoms.size
    if tap.fused_k:
        logits = values[tap.indices].reshape(-1, experts).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        picks = np.argsort(-probs, axis=1, kind="stable")[:, : tap.fused_k]
        gate = np.take_along_axis(probs, picks, axis=1)
        return np.bincount(picks.ravel(), weights=gate.ravel(), minlength=experts)
    picks = values[tap.indices].reshape(-1).astype(np.int64)
    gate = np.ones(picks.size)
    if tap.weights is not None:
        gate = values[tap.weights].reshape(-1).astype(np.float64)
    rows = values.get(tap.rows) if tap.rows else None
    if rows is not None and rows.shape[0] == picks.size:
        gate = gate * np.linalg.norm(rows.reshape(picks.size, -1).astype(np.float64), axis=1)
    return np.bincount(picks, weights=gate, minlength=experts)
