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
from .data import CalibrationData, batches, model_inputs, sample_shapes
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
        n_b = rows.shape[0]
        mean_b = rows.mean(axis=0)
        centred = rows - mean_b
        m2_b = np.einsum("ij,ij->j", centred, centred)
        scatter_b = centred.T @ centred if self.keep_scatter else None
        if self.n == 0:
            self.n, self.mean, self.m2, self.scatter = n_b, mean_b, m2_b, scatter_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        if self.keep_scatter:
            self.scatter += scatter_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

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

    def channels(self, consumer: Consumer) -> Moments:
        return self.moments[consumer.channel_key]

    def features(self, consumer: Consumer) -> Moments | None:
        key = consumer.feature_key
        return None if key is None else self.moments.get(key)

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "batch": self.batch,
            **({"batch_note": self.batch_note} if self.batch_note else {}),
            "consumers": len(self.consumers),
            "tensors": len({c.tensor for c in self.consumers}),
            "execution_provider": self.provider,
            "runs_per_batch": self.chunks,
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
    provider: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
    blocks: bool = False,
) -> CalibrationStats:
    """Stream the calibration data through the model and reduce every consumer input to
    running moments (`scatter=True` adds X^T X of the features, for least squares;
    `blocks=True` adds the Block Influence of every block group, in a pass of its own)."""
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
    for consumer in consumers:
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
    chosen = choose_batch(model, data, batch, provider)
    stats.batch, stats.batch_note = chosen.size, chosen.note
    per_sample = _bytes_per_sample(model, data, consumers)
    chunks = _chunks(model, consumers, per_sample, chunk_bytes // max(chosen.size, 1))
    if taps:  # the routers' few tensors, in one run of their own
        chunks = [*(c for c in chunks if c), sorted({t for tap in taps for t in tap.tensors})]
    stats.chunks = len(chunks)
    dtypes = _dtypes(analysis, consumers)
    dtypes.update({t: onnx.TensorProto.UNDEFINED for tap in taps for t in tap.tensors})
    for chunk in chunks:
        exposed = _exposing(model, chunk, dtypes, chosen.relax)
        stats.samples = _run_chunk(stats, exposed, chunk, data, chosen.size, provider, progress)
    if stats.samples == 0:
        raise GraphpruneError("the calibration data holds no samples")
    return stats


def _run_chunk(stats, model, chunk, data, batch, provider, progress) -> int:
    """One pass over the data with `chunk`'s tensors exposed; returns the sample count."""
    fed = set(model_inputs(model))
    exposed = [t for t in chunk if t not in fed]
    sess = session(model, provider)
    samples = 0
    # A with-block closes the bar on errors too, so no half-drawn line stays on stderr.
    with tqdm(batches(model, data, batch), desc="calibrate", disable=not progress,
              leave=False) as bar:  # fmt: skip
        for feeds in bar:
            values = dict(zip(exposed, run(sess, feeds), strict=True))
            values.update({name: feeds[name] for name in chunk if name in fed})
            done: set[str] = set()
            for consumer in stats.consumers:
                if consumer.tensor in values:
                    _fold(stats, consumer, values[consumer.tensor], done)
            for tap in stats.taps:
                if all(t in values for t in tap.tensors):
                    scores = routing_scores(tap, values)
                    stats.routing[tap.router] = stats.routing.get(tap.router, 0) + scores
            samples += next(iter(feeds.values())).shape[0]
    return samples


def _fold(stats: CalibrationStats, consumer: Consumer, value: np.ndarray, done: set[str]):
    """Update the moments of one consumer input with one batch (each key once per batch)."""
    for key in (consumer.channel_key, consumer.feature_key):
        if key is None or key in done:
            continue
        done.add(key)
        moments = stats.moments[key]
        if key == consumer.channel_key:
            rows = np.moveaxis(value, consumer.channel_axis, -1)
            moments.update(rows.reshape(-1, rows.shape[-1]))
            continue
        # im2col rows in blocks, so a batch never materialises all patches at once.
        per_sample = max(1, int(np.prod(value.shape[1:])) * consumer.geometry.size)
        step = max(1, ROW_BLOCK_FLOATS // per_sample)
        for start in range(0, value.shape[0], step):
            moments.update(im2col(value[start : start + step], consumer.geometry))


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


def fold_values(stats: CalibrationStats, values: dict[str, np.ndarray]) -> None:
    """Fold one batch of consumer inputs (by tensor name) into `stats`, for callers that
    run the model themselves (`graphprune.posttrain.sequential`: one layer at a time)."""
    done: set[str] = set()
    for consumer in stats.consumers:
        if consumer.tensor in values:
            _fold(stats, consumer, values[consumer.tensor], done)
