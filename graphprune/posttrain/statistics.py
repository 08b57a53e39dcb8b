"""Calibration statistics: run the model on calibration data in onnxruntime and keep, for
every consumer of prunable channels, running statistics of what it reads.

The consumers are exactly the absorbing edits of the analysis (a Conv's input channels,
a Gemm's or MatMul's input features): their data inputs are the pruned channels. Those
tensors become temporary graph outputs (in chunks of bounded size when there are many),
batches stream through onnxruntime (CUDA when it works, `graphprune.validation`), and each
batch is folded into running moments and dropped: per-channel count, mean and M2 (for the
activation criteria), and, where compensation needs it, the centred second-moment matrix
of the consumer's features (channels for Gemm/MatMul, im2col patches for a Conv). Memory
is bounded by the model and the batch, never by the number of samples.

Moments merge with Chan et al.'s pairwise update (1979), in float64, so the statistics do
not depend on the batch size beyond rounding and the variance does not cancel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from ..core.analysis import Analysis
from ..core.channels import SliceConstant, SliceGroupedInput
from ..errors import GraphpruneError
from ..io.protos import node_attribute
from ..io.shapes import infer_shapes
from ..runtime.sessions import execution_provider, run, session
from .batching import choose_batch, relax_batch
from .data import (
    CalibrationData,
    Place,
    Places,
    batches,
    model_inputs,
    padding_input,
    real_positions,
    sample_shapes,
)
from .influence import block_influence
from .patches import ConvGeometry, conv_geometry, im2col
from .routing import RoutingTap, find_routing, routing_scores

CHUNK_BYTES = 512 * 2**20  # activations exposed per batch and run
ROW_BLOCK_FLOATS = 2**23  # im2col rows are processed in blocks of about this many floats
MAX_PATCH_FEATURES = 8192  # above this a Conv's patch X^T X is not kept (bias-only)


@dataclass(frozen=True)
class Consumer:
    """A node whose weight absorbs prunable channels, and how its data input is laid out.

    `positions` is the atom at each input position (the absorbing edit's atoms; (groups,
    per group) for a grouped Conv). `features` names the statistics of what the weight
    multiplies: the channels themselves for Gemm/MatMul, patches for a plain Conv."""

    node: str
    op: str
    tensor: str
    channel_axis: int
    weight_axis: int
    positions: np.ndarray
    grouped: bool = False
    geometry: ConvGeometry | None = None

    @property
    def channel_key(self) -> str:
        return f"{self.tensor}@{self.channel_axis}"

    @property
    def feature_key(self) -> str | None:
        if self.grouped or self.op == "ConvTranspose":
            return None
        if self.geometry is None:
            return self.channel_key
        return f"{self.tensor}#{self.geometry.key()}"


class Moments:
    """Running count, mean and M2 per feature, plus the centred scatter matrix if asked."""

    def __init__(self, scatter: bool = False) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.scatter: np.ndarray | None = None
        self.keep_scatter = scatter

    def update(self, rows: np.ndarray) -> None:
        """Fold rows (samples, features) in."""
        if rows.shape[0] == 0:
            return
        rows = rows.astype(np.float64, copy=False)
        batch = Moments(self.keep_scatter)
        batch.n = rows.shape[0]
        batch.mean = rows.mean(axis=0)
        centred = rows - batch.mean
        batch.m2 = np.einsum("ij,ij->j", centred, centred)
        batch.scatter = centred.T @ centred if self.keep_scatter else None
        self.merge(batch, adopt=True)

    def merge(self, other: Moments, *, adopt: bool = False) -> None:
        """Fold another set of moments in (Chan et al.); `adopt`: take its arrays as they
        are when this one is empty (they are not used elsewhere)."""
        if other.n == 0:
            return
        if self.n == 0:
            take = (lambda a: a) if adopt else (lambda a: None if a is None else a.copy())
            self.n, self.mean, self.m2 = other.n, take(other.mean), take(other.m2)
            self.scatter = take(other.scatter) if self.keep_scatter else None
            return
        n_b, mean_b = other.n, other.mean
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * n_b / n)
        if self.keep_scatter:
            self.scatter += other.scatter + np.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    @staticmethod
    def merged(parts: list[Moments]) -> Moments:
        """The moments of all parts together."""
        total = Moments(scatter=all(p.keep_scatter for p in parts))
        for part in parts:
            total.merge(part)
        return total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.n, 1)

    @property
    def rms(self) -> np.ndarray:
        """sqrt(E[x^2]): ||X_j|| per sample, independent of the number of samples."""
        return np.sqrt(self.variance + self.mean**2)

    @property
    def covariance(self) -> np.ndarray:
        if self.scatter is None:
            raise GraphpruneError("least-squares compensation needs X^T X statistics")
        return self.scatter / max(self.n, 1)


@dataclass
class CalibrationStats:
    """Everything criteria and compensation read: consumers and their moments."""

    consumers: list[Consumer]
    moments: dict[str, Moments]
    samples: int = 0
    batch: int = 0  # the batch size it ran at (`batching.choose_batch`)
    batch_note: str | None = None  # why that is not the batch asked for
    provider: str = "CPUExecutionProvider"
    chunks: int = 1
    notes: list[str] = field(default_factory=list)
    taps: list[RoutingTap] = field(default_factory=list)  # routers (`routing`)
    routing: dict[str, np.ndarray] = field(default_factory=dict)  # router -> expert scores
    block_influence: dict[str, float] = field(default_factory=dict)  # block group -> BI
    # Feature key -> the moments of k disjoint parts of the samples (sample i in part
    # i % k), for choosing the damping by held-out error (`damping`); their merge is
    # `moments[key]`.
    folds: dict[str, list[Moments]] = field(default_factory=dict)
    mask: str | None = None  # the input whose zeros mark padding positions, left out
    padding: int = 0  # positions left out as padding (mask 0)
    positions: int = 0  # positions of the mask in all
    unmasked: set[str] = field(default_factory=set)  # consumers whose positions were all kept
    # Consumer node -> output-aware statistics from gradients (`recovery.fisher`).
    fisher: dict[str, np.ndarray] = field(default_factory=dict)  # per input position
    output_gram: dict[str, np.ndarray] = field(default_factory=dict)  # (outputs, outputs)

    def channels(self, consumer: Consumer) -> Moments:
        return self.moments[consumer.channel_key]

    def features(self, consumer: Consumer) -> Moments | None:
        key = consumer.feature_key
        return None if key is None else self.moments.get(key)

    def summary(self) -> dict:
        padding = {"padding_mask": self.mask, "padding_positions": self.padding,
                   "positions": self.positions} if self.mask else {}  # fmt: skip
        return {
            "samples": self.samples,
            "batch": self.batch,
            **({"batch_note": self.batch_note} if self.batch_note else {}),
            "consumers": len(self.consumers),
            "tensors": len({c.tensor for c in self.consumers}),
            "execution_provider": self.provider,
            "runs_per_batch": self.chunks,
            **padding,
            **({"folds": len(next(iter(self.folds.values())))} if self.folds else {}),
            "notes": self.notes,
        }


# Absorbing consumers whose absorbed input is not their input 0 with features on one axis
# (a recurrent layer's R absorbs its own hidden state, W's columns a [seq, batch, input];
# expert weights absorb the experts' own hidden units, not the input).
_UNOBSERVED = frozenset({"LSTM", "GRU", "RNN", "MoE", "Gather", "GatherND"})


def find_consumers(analysis: Analysis, groups: list[int] | None = None) -> list[Consumer]:
    """Consumers whose absorbed positions belong to `groups` (default: every prunable one).
    Consumers inside subgraphs are left out: a body's tensors cannot become graph outputs."""
    wanted = {g.id for g in analysis.prunable_groups} if groups is None else set(groups)
    view = analysis.view
    main = {node.name for node in view.order}
    found = []
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant | SliceGroupedInput) or not edit.absorbs:
            continue
        if edit.quantized is not None or edit.input_index != 1:
            continue  # integer weights (and MatMulNBits' scales): no float weight to score
        touched = set(analysis.group_of_class[analysis.class_of[edit.atoms.ravel()]].tolist())
        if not touched & wanted:
            continue
        node = view.nodes[edit.node]
        if edit.node not in main or node.op_type in _UNOBSERVED:
            continue
        if node.op_type == "MatMul":
            axis = -1
        elif node.op_type == "Gemm":
            axis = 0 if node_attribute(node, "transA", 0) else 1
        else:
            axis = 1
        geometry = None
        grouped = isinstance(edit, SliceGroupedInput)
        if node.op_type == "Conv" and not grouped:
            geometry = conv_geometry(node, view.constant_shape(node.input[1]))
        found.append(
            Consumer(
                node=node.name,
                op=node.op_type,
                tensor=node.input[0],
                channel_axis=axis,
                weight_axis=-1 if grouped else edit.axis,
                positions=edit.atoms,
                grouped=grouped,
                geometry=geometry,
            )
        )
    found.sort(key=lambda c: view.position[c.node])
    return found


def collect(
    analysis: Analysis,
    data: CalibrationData,
    *,
    consumers: list[Consumer] | None = None,
    batch: int = 32,
    scatter: bool = False,
    folds: int = 0,
    provider: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
    blocks: bool = False,
) -> CalibrationStats:
    """Stream the calibration data through the model and reduce every consumer input to
    running moments (`scatter=True` adds X^T X of the features, for least squares;
    `folds=k` keeps those in k parts, for choosing the damping by held-out error;
    `blocks=True` adds the Block Influence of every block group, in a pass of its own).
    Positions where the padding mask (`data.mask`, `padding_input`) is 0 are left out."""
    model = analysis.view.model
    consumers = find_consumers(analysis) if consumers is None else consumers
    provider = provider or execution_provider()
    taps = find_routing(analysis, {g.id for g in analysis.prunable_groups})
    stats = CalibrationStats(consumers, {}, provider=provider, taps=taps)
    if blocks:
        stats.block_influence, stats.samples, chosen = block_influence(
            analysis, data, batch=batch, provider=provider, progress=progress
        )
        if chosen is not None and stats.samples == 0:
            raise GraphpruneError("the calibration data holds no samples")
        if chosen is not None:
            stats.batch, stats.batch_note = chosen.size, chosen.note
    if not consumers and not taps:
        return stats
    stats.mask = padding_input(model, data)
    add_moments(stats, analysis, scatter=scatter, folds=folds)
    chosen = choose_batch(model, data, batch, provider)
    stats.batch, stats.batch_note = chosen.size, chosen.note
    per_sample = _bytes_per_sample(model, data, consumers)
    chunks = _chunks(model, consumers, per_sample, chunk_bytes // max(chosen.size, 1))
    if taps:  # the routers' few tensors, in one run of their own
        chunks = [*(c for c in chunks if c), sorted({t for tap in taps for t in tap.tensors})]
    stats.chunks = len(chunks)
    dtypes = _dtypes(analysis, consumers)
    dtypes.update({t: onnx.TensorProto.UNDEFINED for tap in taps for t in tap.tensors})
    for index, chunk in enumerate(chunks):
        exposed = _exposing(model, chunk, dtypes, chosen.relax)
        stats.samples = _run_chunk(
            stats, exposed, chunk, data, chosen.size, provider, progress, count=index == 0
        )
    if stats.samples == 0:
        raise GraphpruneError("the calibration data holds no samples")
    merge_folds(stats)
    for node in sorted(stats.unmasked):
        stats.notes.append(
            f"'{node}': input not laid out [batch, sequence, ...]; its padding positions count"
        )
    return stats


def _run_chunk(stats, model, chunk, data, batch, provider, progress, count) -> int:
    """One pass over the data with `chunk`'s tensors exposed; returns the sample count
    (`count`: the padding positions are counted in this pass)."""
    fed = set(model_inputs(model))
    exposed = [t for t in chunk if t not in fed]
    sess = session(model, provider)
    places = Places(stats.mask)
    # A with-block closes the bar on errors too, so no half-drawn line stays on stderr.
    with tqdm(places.track(batches(model, data, batch)), desc="calibrate",
              disable=not progress, leave=False) as bar:  # fmt: skip
        for feeds in bar:
            where = places.batches[-1]
            values = dict(zip(exposed, run(sess, feeds), strict=True))
            values.update({name: feeds[name] for name in chunk if name in fed})
            done: set[str] = set()
            for consumer in stats.consumers:
                if consumer.tensor in values:
                    _fold(stats, consumer, values[consumer.tensor], done, where)
            for tap in stats.taps:
                if all(t in values for t in tap.tensors):
                    scores = routing_scores(tap, values)
                    stats.routing[tap.router] = stats.routing.get(tap.router, 0) + scores
    if count:
        stats.positions, stats.padding = places.positions, places.padding
    return places.samples


def _fold(stats: CalibrationStats, consumer: Consumer, value: np.ndarray, done: set[str],
          where: Place) -> None:  # fmt: skip
    """Update the moments of one consumer input with one batch (each key once per batch)."""
    for key in (consumer.channel_key, consumer.feature_key):
        if key is None or key in done:
            continue
        done.add(key)
        for moments, part, mask in _parts(stats, key, consumer, value, where):
            if key == consumer.channel_key:
                _fold_channels(stats, moments, consumer, part, mask)
                continue
            # im2col rows in blocks, so a batch never materialises all patches at once.
            per_sample = max(1, int(np.prod(part.shape[1:])) * consumer.geometry.size)
            step = max(1, ROW_BLOCK_FLOATS // per_sample)
            for start in range(0, part.shape[0], step):
                moments.update(im2col(part[start : start + step], consumer.geometry))


def _parts(stats: CalibrationStats, key: str, consumer: Consumer, value: np.ndarray,
           where: Place):  # fmt: skip
    """(moments, values, mask) to fold: the whole batch, or with folds the samples of each
    fold (by sample index when axis 0 is the batch, else the whole batch by its index)."""
    folds = stats.folds.get(key)
    if folds is None:
        yield stats.moments[key], value, where.mask
        return
    k = len(folds)
    batch_axis = value.ndim > 0 and value.shape[0] == where.size
    if not batch_axis or consumer.channel_axis % value.ndim == 0:
        yield folds[where.index % k], value, where.mask
        return
    fold_of = (where.first + np.arange(where.size)) % k
    for fold in range(k):
        picked = np.nonzero(fold_of == fold)[0]
        if picked.size:
            mask = None if where.mask is None else where.mask[picked]
            yield folds[fold], value[picked], mask


def _fold_channels(stats: CalibrationStats, moments: Moments, consumer: Consumer,
                   value: np.ndarray, mask: np.ndarray | None) -> None:  # fmt: skip
    rows = np.moveaxis(value, consumer.channel_axis, -1)
    keep = None if mask is None else real_positions(rows.shape[:-1], mask)
    if mask is not None and keep is None:
        stats.unmasked.add(consumer.node)
    moments.update(rows[keep] if keep is not None else rows.reshape(-1, rows.shape[-1]))


def _exposing(model: onnx.ModelProto, tensors: list[str], dtypes: dict[str, int], relax: bool):
    """A copy whose outputs are exactly `tensors` (onnxruntime then skips the rest);
    `relax` makes a fixed batch dim symbolic, so that batches of any size run."""
    exposed = relax_batch(model) if relax else onnx.ModelProto()
    if not relax:
        exposed.CopyFrom(model)
    inputs = set(model_inputs(model))
    del exposed.graph.output[:]
    exposed.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, dtypes.get(name, onnx.TensorProto.FLOAT), None)
        if dtypes.get(name) != onnx.TensorProto.UNDEFINED
        else onnx.helper.make_empty_tensor_value_info(name)  # onnxruntime knows the type
        for name in tensors
        if name not in inputs
    )
    return exposed


def _dtypes(analysis: Analysis, consumers: list[Consumer]) -> dict[str, int]:
    """A consumer's data input has its weight's element type."""
    view = analysis.view
    found = {}
    for consumer in consumers:
        weight = view.storage(view.nodes[consumer.node].input[1])
        if weight in view.initializers:
            found[consumer.tensor] = view.initializers[weight].data_type
    return found


def _bytes_per_sample(model, data: CalibrationData, consumers: list[Consumer]) -> dict[str, int]:
    try:
        shapes = infer_shapes(model, sample_shapes(model, data))
    except Exception:  # shapes only size the chunks; unknown ones count as large
        shapes = {}
    sizes = {}
    for consumer in consumers:
        shape = shapes.get(consumer.tensor)
        known = shape is not None and all(isinstance(d, int) for d in shape)
        sizes[consumer.tensor] = int(np.prod(shape)) * 4 if known else 4 * 2**20
    return sizes


def _chunks(model, consumers: list[Consumer], sizes: dict[str, int], budget: int):
    chunks: list[list[str]] = [[]]
    used = 0
    for tensor in dict.fromkeys(c.tensor for c in consumers):
        if chunks[-1] and used + sizes[tensor] > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(tensor)
        used += sizes[tensor]
    return chunks


def _feature_count(analysis: Analysis, consumer: Consumer) -> int:
    shape = analysis.view.constant_shape(analysis.view.nodes[consumer.node].input[1])
    return int(np.prod(shape[1:]))


def add_moments(
    stats: CalibrationStats, analysis: Analysis, *, scatter: bool = False, folds: int = 0
) -> None:
    """Empty moments for every consumer of `stats` to fold into: channel statistics, and
    with `scatter` the X^T X of its features (not for convolutions of more than
    MAX_PATCH_FEATURES patch features: bias compensation only), in `folds` parts when
    `--damp auto` chooses the damping by held-out error."""
    for consumer in stats.consumers:
        stats.moments.setdefault(consumer.channel_key, Moments())
        key = consumer.feature_key
        if key is None:
            continue
        if consumer.geometry is not None:
            features = _feature_count(analysis, consumer)
            keep = scatter and features <= MAX_PATCH_FEATURES
            if scatter and not keep:
                stats.notes.append(
                    f"'{consumer.node}': {features} patch features, X^T X not kept (bias only)"
                )
            stats.moments.setdefault(key, Moments(scatter=keep))
        elif scatter:
            stats.moments[key].keep_scatter = True
        if folds > 1 and stats.moments[key].keep_scatter and key not in stats.folds:
            stats.folds[key] = [Moments(scatter=True) for _ in range(folds)]


def fold_values(stats: CalibrationStats, values: dict[str, np.ndarray], where: Place) -> None:
    """Fold one batch of consumer inputs (by tensor name) into `stats`, for callers that
    run the model themselves (`graphprune.posttrain.sequential`: one layer at a time);
    `where` is the batch's place in the data (`Places`)."""
    done: set[str] = set()
    for consumer in stats.consumers:
        if consumer.tensor in values:
            _fold(stats, consumer, values[consumer.tensor], done, where)


def merge_folds(stats: CalibrationStats) -> None:
    """Each folded key's moments become the merge of its folds (all the samples)."""
    for key, parts in stats.folds.items():
        stats.moments[key] = Moments.merged(parts)
