"""Closed-form compensation: adjust the consumers of pruned channels so that their outputs
change as little as possible, without fine-tuning.

A consumer computes y = x W + b over features x (Gemm/MatMul inputs; a Conv's im2col
patches, `graphprune.patches`). Removing features R and keeping S, with mu and C the mean
and covariance of x over the calibration data:

- "bias" (FLAP, An et al., AAAI 2024): b += mu_R W_R. The expected output is unchanged,
  and the output error is zero whenever the removed features are constant.
- "lsq": the least-squares fit of the lost term x_R W_R by the kept features and a
  constant, min ||x_S D + beta - x_R W_R||^2, i.e. D = (C_SS + lambda I)^-1 C_SR W_R
  added to W_S and beta = mu_R W_R - mu_S D added to b. This is the OBS reconstruction
  (Hassibi & Stork 1993) for a whole set of columns at once, as ZipLM (Kurtic et al. 2023)
  and SlimGPT (Ling et al. 2024) apply it to structured pruning, with their damping:
  lambda = `damp` * mean(diag C_SS). On centred statistics the bias is part of the
  solution, so lsq is never worse than bias on the calibration data, and the error is
  zero (up to damping) when the removed features are affine functions of the kept ones.

For a Conv the features are patches (channel x kernel offset, zero padding included), so
the fit is exact for the convolution actually computed; patches of a Conv too wide to
hold X^T X (`calibration.MAX_PATCH_FEATURES`), grouped Convs and ConvTranspose get bias
or no compensation, as the notes say.

The result is the *dense* model with adjusted kept weights and biases (a MatMul without a
bias gets one: folded into the Add that follows it, or a new Add); the ordinary rewrite
then slices it with the same plan, re-analysed (`graphprune.api.compensate`).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import scipy.linalg
from onnx import numpy_helper

from ..core.analysis import Analysis
from ..core.graph import GraphView
from ..errors import GraphpruneError, first_line
from ..io.external import to_array
from ..io.protos import node_attribute, unique_name
from .damping import choose_damp
from .statistics import CalibrationStats, Consumer

METHODS = ("none", "bias", "lsq")
DEFAULT_DAMP = 0.01  # --damp without "auto" (and where held-out damping cannot run)


def compensated_model(
    analysis: Analysis,
    keep_atom: np.ndarray,
    stats: CalibrationStats,
    *,
    method: str = "lsq",
    damp: float | str = 0.01,
    damping: list[dict] | None = None,
    into: onnx.ModelProto | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the model whose consumers of removed channels (atoms not in `keep_atom`)
    are compensated, with notes on what was not; the rewrite then removes the channels.
    `damp="auto"` chooses each consumer's damp by held-out error on the folds of `stats`
    (`damping`); the choices are appended to `damping` when given. `into`: write into this
    model (the analysed one, or one compensated before for other consumers, as
    layer-by-layer repair does) instead of a copy."""
    check_damp(damp)
    if method not in METHODS:
        raise GraphpruneError(f"unknown compensation {method!r} (choose from {METHODS})")
    model = into
    if model is None:
        model = onnx.ModelProto()
        model.CopyFrom(analysis.view.model)
    notes: list[str] = []
    if method == "none":
        return model, notes
    writer = _Writer(model, analysis.view)
    for consumer in stats.consumers:
        keep = keep_atom[consumer.positions.ravel()]
        if keep.all():
            continue
        moments = stats.features(consumer)
        if moments is None:
            notes.append(f"'{consumer.node}' ({consumer.op}): not compensated")
            continue
        weight, from_matrix = weight_matrix(analysis, consumer)
        size = consumer.geometry.size if consumer.geometry is not None else 1
        kept = np.repeat(keep, size)
        if method == "lsq" and moments.scatter is None:
            notes.append(f"'{consumer.node}': no X^T X kept, bias compensation only")
        chosen = damp
        if method == "lsq" and moments.scatter is not None and damp == "auto":
            chosen = _auto_damp(stats, consumer, weight, kept, notes, damping)
        if method == "lsq" and moments.scatter is not None and not math.isinf(chosen):
            delta, shift = least_squares(moments.covariance, moments.mean, weight, kept, chosen)
            writer.set_weight(consumer.node, from_matrix(weight + delta))
        else:
            shift = moments.mean[~kept] @ weight[~kept]
        writer.add_bias(consumer, shift)
    return writer.finish(), notes


def check_damp(damp: float | str) -> None:
    if damp == "auto":
        return
    if isinstance(damp, str) or not 0 <= damp < math.inf:
        raise GraphpruneError(f"--damp must be 'auto' or non-negative and finite, got {damp}")


def _auto_damp(stats, consumer, weight, kept, notes, damping) -> float:
    """The held-out choice for one consumer (`damping`), DEFAULT_DAMP without folds."""
    folds = stats.folds.get(consumer.feature_key)
    choice = None if folds is None else choose_damp(folds, weight, kept)
    if choice is None:
        notes.append(
            f"'{consumer.node}': too few calibration samples for held-out damping, "
            f"damp {DEFAULT_DAMP}"
        )
        return DEFAULT_DAMP
    if damping is not None:
        damping.append({
            "node": consumer.node,
            "damp": "bias" if math.isinf(choice.damp) else choice.damp,
            "heldout_error": round(choice.error, 6),
        })  # fmt: skip
    return choice.damp


def _lstsq(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.lstsq(system, rhs, rcond=None)[0]
    except np.linalg.LinAlgError as error:  # "SVD did not converge" on degenerate statistics
        raise GraphpruneError(f"least-squares compensation failed: {first_line(error)}") from None


def least_squares(
    covariance: np.ndarray, mean: np.ndarray, weight: np.ndarray, kept: np.ndarray, damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """(D, beta): the update of the kept rows of `weight` (zero on removed rows) and the
    bias shift that best reproduce x W from the kept features of x (see module doc)."""
    s, r = np.nonzero(kept)[0], np.nonzero(~kept)[0]
    c_ss = covariance[np.ix_(s, s)]
    scale = float(np.mean(np.diag(c_ss))) if s.size else 0.0
    lam = damp * scale if scale > 0 else 1e-12
    rhs = covariance[np.ix_(s, r)] @ weight[r]
    system = c_ss + lam * np.eye(s.size)
    if not (np.isfinite(system).all() and np.isfinite(rhs).all()):
        raise GraphpruneError("least-squares compensation: NaN or inf in statistics or weights")
    try:
        update = scipy.linalg.solve(system, rhs, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        update = _lstsq(system, rhs)
    delta = np.zeros_like(weight)
    delta[s] = update
    shift = mean[r] @ weight[r] - mean[s] @ update
    return delta, shift


def weight_matrix(analysis: Analysis, consumer: Consumer):
    """The consumer's weight as a float64 (features, outputs) matrix, and the inverse map."""
    view = analysis.view
    node = view.nodes[consumer.node]
    value = view.constant(node.input[1])
    dtype = value.dtype
    w = value.astype(np.float64)
    if consumer.op == "Conv":
        shape = w.shape
        return w.reshape(shape[0], -1).T, lambda m: m.T.reshape(shape).astype(dtype)
    if consumer.op == "Gemm" and node_attribute(node, "transB", 0):
        return w.T, lambda m: m.T.astype(dtype)
    return w, lambda m: m.astype(dtype)


class _Writer:
    """Writes new weights and biases into a model copy, never into shared constants."""

    def __init__(self, model: onnx.ModelProto, view: GraphView) -> None:
        self.model = model
        self.view = view
        self.nodes = {node.name: node for node in model.graph.node}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.uses = Counter(name for node in model.graph.node for name in node.input if name)
        self.added: list[tuple[str, onnx.NodeProto]] = []

    def _put(self, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str) -> None:
        name = node.input[index] if index < len(node.input) else ""
        if name and name in self.initializers and self.uses[name] == 1:
            self.initializers[name].CopyFrom(numpy_helper.from_array(value, name))
            return
        new_name = self._fresh(f"{name or node.name}__{suffix}")
        tensor = numpy_helper.from_array(np.asarray(value, order="C"), new_name)
        self.model.graph.initializer.append(tensor)
        self.initializers[new_name] = self.model.graph.initializer[-1]
        while len(node.input) <= index:
            node.input.append("")
        if name:
            self.uses[name] -= 1
        node.input[index] = new_name
        self.uses[new_name] += 1

    def _fresh(self, base: str) -> str:
        taken = set(self.initializers) | {o for n in self.model.graph.node for o in n.output}
        return unique_name(base, taken, separator="")

    def set_weight(self, node_name: str, value: np.ndarray) -> None:
        self._put(self.nodes[node_name], 1, value, "compensated")

    def add_bias(self, consumer: Consumer, shift: np.ndarray) -> None:
        node = self.nodes[consumer.node]
        dtype = self.view.constant(node.input[1]).dtype
        if consumer.op == "Gemm":
            # Y = alpha A B + beta C: a shift s of Y is C += s / beta, and the weight
            # matrix already includes alpha, so the shift does too.
            alpha = float(node_attribute(node, "alpha", 1.0))
            beta = float(node_attribute(node, "beta", 1.0))
            if self._add_to(node, 2, shift * alpha / beta, dtype):
                return
        elif consumer.op == "Conv":
            if self._add_to(node, 2, shift, dtype):
                return
        elif consumer.op == "MatMul" and self._fold_into_add(node, shift, dtype):
            return
        self._insert_add(node, shift, dtype)

    def _add_to(self, node: onnx.NodeProto, index: int, shift, dtype) -> bool:
        """Add `shift` to a constant per-output bias input, or create one."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            self._put(node, index, shift.astype(dtype), "bias")
            return True
        current = self._value(name)
        if current is None or current.size not in (1, shift.size):
            return False
        if current.size == 1 and current.ndim > 1:
            return False
        base = np.broadcast_to(current.reshape(-1), shift.shape).astype(np.float64)
        self._put(node, index, (base + shift).astype(current.dtype), "compensated")
        return True

    def _value(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return to_array(self.initializers[name])
        return self.view.constant(name)

    def _fold_into_add(self, node: onnx.NodeProto, shift, dtype) -> bool:
        """MatMul -> Add(bias): the exporters' Linear. Fold the shift into that bias."""
        out = node.output[0]
        users = [n for n in self.model.graph.node if out in n.input]
        graph_outputs = {o.name for o in self.model.graph.output}
        if len(users) != 1 or users[0].op_type != "Add" or out in graph_outputs:
            return False
        add = users[0]
        other = 1 if add.input[0] == out else 0
        value = self._value(add.input[other])
        if value is None or value.size != shift.size or value.shape[-1] != shift.size:
            return False
        new = (value.astype(np.float64) + shift.reshape(value.shape)).astype(value.dtype)
        self._put(add, other, new, "compensated")
        return True

    def _insert_add(self, node: onnx.NodeProto, shift, dtype) -> None:
        """y = op(...) + shift: rename the op's output and let a new Add produce it."""
        out = node.output[0]
        inner = self._fresh(f"{out}__uncompensated")
        bias = self._fresh(f"{node.name}__compensation")
        self.model.graph.initializer.append(numpy_helper.from_array(shift.astype(dtype), bias))
        self.initializers[bias] = self.model.graph.initializer[-1]
        node.output[0] = inner
        add = onnx.helper.make_node(
            "Add", [inner, bias], [out], name=self._fresh(f"{node.name}__compensation_add")
        )
        self.added.append((node.name, add))

    def finish(self) -> onnx.ModelProto:
        """Insert the new Add nodes right after their producers (keeps the file order
        topological) and return the model."""
        if not self.added:
            return self.model
        after = dict(self.added)
        nodes = list(self.model.graph.node)
        del self.model.graph.node[:]
        for node in nodes:
            self.model.graph.node.append(node)
            if node.name in after:
                self.model.graph.node.append(after[node.name])
        return self.model
