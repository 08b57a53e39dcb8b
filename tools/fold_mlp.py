"""Neuron folding of transformer MLPs (bench only): merge each MLP's n hidden neurons into k
instead of removing n - k of them (model folding, Wang et al. 2024; ZipIt, Stock et al.).

An MLP here is `down(gelu(x @ W_up + b_up)) = h @ W_down + b_down` as the ONNX exporters
write it (MatMul, Add, an erf GELU, MatMul, Add), found from graphprune's "mlp" groups.
Folding:

1. cluster the n neurons into k: k-means (or greedy pairing when k = n/2) with each
   neuron weighted by a_j = |W_down[j]|^2 (its output weight), on one of two metrics
   measured on the calibration tokens: "pre", the RMS difference of two neurons'
   pre-activations (x W_up + b_up), i.e. the distance of their [W_up; b_up] columns under
   the second moment of [x, 1]; or "post", the RMS difference of their GELU activations.
   With "pre" the weighted k-means objective sum_j a_j E(z_j - z_c)^2 bounds, to first
   order, the output error of replacing every neuron by its cluster's merged neuron;
2. merge: the cluster's up column and bias = the a-weighted mean of its members', its down
   row = the sum of theirs (exact when the members are equal);
3. re-fit the down-projection by damped least squares on the folded activations h_f
   against the dense output h W_down, the update ridge-damped towards the summed rows
   (lambda = damp x mean diag of cov(h_f), graphprune's lsq convention; for pruning this
   is exactly graphprune's lsq repair), damp="auto" choosing per layer by k-fold held-out
   error over graphprune's candidates.

Statistics are taken once from the dense model (the inputs x of every MLP on the
calibration tokens, padding left out). The folded model has the shapes of a pruned one
(k neurons per MLP): same parameters and MACs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import onnx
import scipy.linalg
import scipy.special
from onnx import numpy_helper

from graphprune.posttrain.damping import CANDIDATES
from graphprune.posttrain.statistics import find_consumers
from graphprune.runtime.sessions import run, session

FOLDS = 4


@dataclass(frozen=True)
class Mlp:
    """Names of one MLP's tensors in the model."""

    inputs: str  # the tensor the up-projection reads
    up_weight: str
    up_bias: str
    down_weight: str
    down_bias: str


@dataclass(frozen=True)
class Folded:
    """One folded layer: the new weights and what the re-fit chose."""

    up_weight: np.ndarray
    up_bias: np.ndarray
    down_weight: np.ndarray
    down_bias_shift: np.ndarray
    damp: float
    error: float  # relative k-fold held-out error of the re-fit output
    sizes: np.ndarray | None = None  # the clusters' sizes


def find_mlps(analysis) -> list[Mlp]:
    """Every "mlp" group whose single source MatMul is followed by a bias Add and whose
    single consumer MatMul (the down-projection) reads constants."""
    model = analysis.view.model
    inits = {i.name for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes = {n.name: n for n in model.graph.node}

    def bias_after(node) -> str | None:
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            return next((t for t in after[0].input if t in inits), None)
        return None

    found = []
    for group in analysis.prunable_groups:
        if group.kind != "mlp" or len(group.sources) != 1:
            continue
        up = nodes[group.sources[0]]
        consumers = find_consumers(analysis, [group.id])
        if up.op_type != "MatMul" or up.input[1] not in inits or len(consumers) != 1:
            continue
        down = nodes[consumers[0].node]
        if down.op_type != "MatMul" or down.input[1] not in inits:
            continue
        if bias_after(up) is None or bias_after(down) is None:
            continue
        found.append(Mlp(up.input[0], up.input[1], bias_after(up), down.input[1],
                         bias_after(down)))  # fmt: skip
    return found


def capture(model: onnx.ModelProto, mlps: list[Mlp], feeds: list[dict]) -> list[np.ndarray]:
    """Each MLP's input on every unpadded token of `feeds` (rows: tokens), from the model."""
    probe = copy.deepcopy(model)
    names = [m.inputs for m in mlps]
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                     None))  # fmt: skip
    sess = session(probe, "CPUExecutionProvider")
    rows: list[list[np.ndarray]] = [[] for _ in names]
    for feed in feeds:
        mask = feed.get("attention_mask")  # padding left out; a model without one: every row
        for index, value in enumerate(run(sess, feed)):
            keep = np.ones(value.shape[:-1], bool) if mask is None else mask.astype(bool)
            rows[index].append(value[keep])
    return [np.concatenate(r).astype(np.float64) for r in rows]


def gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + scipy.special.erf(z / math.sqrt(2.0)))


def cluster(
    x: np.ndarray, w_up: np.ndarray, b_up: np.ndarray, w_down: np.ndarray, k: int, *,
    method: str = "kmeans", metric: str = "pre", seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """A cluster label in [0, k) for each of the n neurons (columns of w_up)."""
    n = w_up.shape[1]
    weight = (w_down**2).sum(1) + 1e-12
    if metric == "pre":  # coordinates whose distances are RMS pre-activation differences
        xa = np.hstack([x, np.ones((len(x), 1))])
        second = xa.T @ xa / len(x)
        vals, vecs = np.linalg.eigh(second)
        coords = np.vstack([w_up, b_up[None]]).T @ (vecs * np.sqrt(np.clip(vals, 0, None)))
    elif metric == "post":  # the same for the GELU activations
        h = gelu(x @ w_up + b_up)
        vals, vecs = np.linalg.eigh(h.T @ h / len(h))
        coords = vecs * np.sqrt(np.clip(vals, 0, None))
    else:
        raise ValueError(f"unknown metric {metric!r}")
    if method == "pairs":
        if n != 2 * k:
            raise ValueError("pairs folds n neurons into n/2")
        return _pairs(coords, weight)
    if method != "kmeans":
        raise ValueError(f"unknown method {method!r}")
    from sklearn.cluster import KMeans

    fit = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(coords, sample_weight=weight)
    labels = fit.labels_
    return np.unique(labels, return_inverse=True)[1]  # k-means may leave a cluster empty


def _pairs(coords: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Greedy matching: repeatedly pair the two unpaired neurons whose merge costs least
    (the weighted k-means cost of the pair, a_i a_j / (a_i + a_j) |c_i - c_j|^2)."""
    n = len(coords)
    sq = (coords**2).sum(1)
    dist = np.clip(sq[:, None] + sq[None] - 2 * coords @ coords.T, 0, None)
    cost = dist * (weight[:, None] * weight[None]) / (weight[:, None] + weight[None])
    i, j = np.triu_indices(n, 1)
    order = np.argsort(cost[i, j], kind="stable")
    labels = np.full(n, -1)
    pair = 0
    for a, b in zip(i[order], j[order], strict=True):
        if labels[a] < 0 and labels[b] < 0:
            labels[a] = labels[b] = pair
            pair += 1
            if pair == n // 2:
                break
    return labels


def merge(w_up, b_up, w_down, labels: np.ndarray):
    """Merged (up weight, up bias, down weight): per cluster the |W_down row|^2-weighted
    mean of the up columns and biases, and the sum of the down rows."""
    k = int(labels.max()) + 1
    weight = (w_down**2).sum(1) + 1e-12
    onehot = np.zeros((k, len(labels)))
    onehot[labels, np.arange(len(labels))] = weight
    mean = onehot / onehot.sum(1, keepdims=True)
    return w_up @ mean.T, mean @ b_up, (onehot > 0).astype(float) @ w_down


def refit(h_f, target, w0, damp: float | str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(W, shift, damp, error): W = w0 + D minimising |h_f W + shift - target|^2 +
    lam |D|^2 (centered), lam = damp x mean diag cov(h_f); damp="auto" picks the candidate
    with the least held-out error over FOLDS contiguous token folds. The error: relative
    k-fold held-out error (1.0 = the target's variance)."""
    parts = np.array_split(np.arange(len(h_f)), FOLDS)
    moments = [_moments(h_f[p], target[p]) for p in parts]
    candidates = [d for d in CANDIDATES if d != math.inf] if damp == "auto" else [damp]
    errors = []
    for candidate in candidates:
        total, energy = 0.0, 0.0
        for index, part in enumerate(parts):
            train = _sum([m for i, m in enumerate(moments) if i != index])
            w, shift = _solve(train, w0, candidate)
            residual = h_f[part] @ w + shift - target[part]
            total += float((residual**2).sum())
            energy += float(((target[part] - target[part].mean(0)) ** 2).sum())
        errors.append(total / energy)
    best = int(np.argmin(errors))
    w, shift = _solve(_sum(moments), w0, candidates[best])
    return w, shift, candidates[best], errors[best]


def _moments(h, t):
    return len(h), h.sum(0), t.sum(0), h.T @ h, h.T @ t


def _sum(parts):
    return tuple(sum(p[i] for p in parts) for i in range(5))


def _solve(moments, w0, damp: float):
    count, sh, st, hh, ht = moments
    mh, mt = sh / count, st / count
    cov = hh / count - np.outer(mh, mh)
    cross = ht / count - np.outer(mh, mt)
    lam = damp * float(np.mean(np.diag(cov)))
    rhs = cross - cov @ w0
    update = scipy.linalg.solve(cov + max(lam, 1e-12) * np.eye(len(cov)), rhs, assume_a="pos")
    w = w0 + update
    return w, mt - mh @ w


def fold_layer(
    x: np.ndarray, w_up, b_up, w_down, k: int, *, method: str = "kmeans",
    metric: str = "pre", damp: float | str = "auto",
) -> Folded:  # fmt: skip
    """Fold one MLP (x: its inputs on the calibration tokens) into k neurons and re-fit
    the down-projection (damp None: no re-fit, the summed rows as they are)."""
    labels = cluster(x, w_up, b_up, w_down, k, method=method, metric=metric)
    up, bias, down = merge(w_up, b_up, w_down, labels)
    sizes = np.bincount(labels)
    if damp is None:
        return Folded(up, bias, down, np.zeros(w_down.shape[1]), math.nan, math.nan, sizes)
    layer = narrowed(x, w_up, b_up, w_down, up, bias, down, damp)
    return dataclasses.replace(layer, sizes=sizes)


def nearest(x: np.ndarray, w_up: np.ndarray, b_up: np.ndarray) -> np.ndarray:
    """Per neuron: the RMS distance of its GELU activation to the nearest other neuron's,
    relative to its own RMS activation (0: a duplicate, ~1: nothing like it)."""
    h = gelu(x @ w_up + b_up)
    second = h.T @ h / len(h)
    diag = np.diag(second)
    dist = np.sqrt(np.clip(diag[:, None] + diag[None] - 2 * second, 0, None))
    np.fill_diagonal(dist, np.inf)
    return dist.min(1) / np.sqrt(diag + 1e-30)


def narrowed(x, w_up, b_up, w_down, up, bias, down, damp: float | str) -> Folded:
    """The narrow MLP (up, bias, down) with its down-projection re-fit to the dense one's
    output on x; with the kept columns and rows of the dense weights it is pruning
    repaired by graphprune's lsq (the same error, so the two compare)."""
    target = gelu(x @ w_up + b_up) @ w_down
    h_f = gelu(x @ up + bias)
    down, shift, chosen, error = refit(h_f, target, down, damp)
    return Folded(up, bias, down, shift, chosen, error)


def pruned_error(mlps: list[Mlp], model: onnx.ModelProto, inputs, kept: list[np.ndarray],
                 damp: float | str) -> float:  # fmt: skip
    """The mean over the layers of `refit`'s k-fold error when the `kept` neurons of each
    MLP stay as they are (pruning) instead of folding."""
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    errors = []
    for mlp, x, keep in zip(mlps, inputs, kept, strict=True):
        w_up, b_up, w_down = inits[mlp.up_weight], inits[mlp.up_bias], inits[mlp.down_weight]
        layer = narrowed(x, w_up, b_up, w_down, w_up[:, keep], b_up[keep], w_down[keep], damp)
        errors.append(layer.error)
    return float(np.mean(errors))


def fold_model(
    model: onnx.ModelProto, mlps: list[Mlp], inputs: list[np.ndarray], ratio: float, *,
    method: str = "kmeans", metric: str = "pre", damp: float | str | None = "auto",
) -> tuple[onnx.ModelProto, list[Folded]]:  # fmt: skip
    """A copy of `model` with every MLP folded to round(n x (1 - ratio)) neurons."""
    folded = copy.deepcopy(model)
    inits = {i.name: i for i in folded.graph.initializer}
    layers = []
    for mlp, x in zip(mlps, inputs, strict=True):
        value = {n: numpy_helper.to_array(inits[n]).astype(np.float64)
                 for n in (mlp.up_weight, mlp.up_bias, mlp.down_weight)}  # fmt: skip
        k = round(value[mlp.up_weight].shape[1] * (1 - ratio))
        layer = fold_layer(x, value[mlp.up_weight], value[mlp.up_bias],
                           value[mlp.down_weight], k, method=method, metric=metric,
                           damp=damp)  # fmt: skip
        bias = numpy_helper.to_array(inits[mlp.down_bias]) + layer.down_bias_shift
        new = {mlp.up_weight: layer.up_weight, mlp.up_bias: layer.up_bias,
               mlp.down_weight: layer.down_weight, mlp.down_bias: bias}  # fmt: skip
        for name, array in new.items():
            dtype = numpy_helper.to_array(inits[name]).dtype
            inits[name].CopyFrom(numpy_helper.from_array(array.astype(dtype), name))
        layers.append(layer)
    del folded.graph.value_info[:]  # the hidden width changed; onnxruntime infers shapes
    return folded, layers
