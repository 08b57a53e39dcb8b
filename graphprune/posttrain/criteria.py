"""Activation-aware importance from calibration statistics.

A channel j matters through what its consumers do with it: the consumer's output changes by
X_j W_:,j when j goes. Weight magnitude alone ignores the size of X_j, which is why
magnitude pruning collapses without fine-tuning. Per consumer, with ||X_j|| the RMS of
input j over all calibration positions (samples x tokens or pixels) and W_:,j the weight
slice that multiplies it (all outputs, all kernel positions):

- "activation": ||X_j|| * ||W_:,j||_2, the output energy j carries on its own.
- "wanda": ||X_j|| * ||W_:,j||_1, Wanda's |W_ij| * ||X_j|| (Sun et al., "A Simple and
  Effective Pruning Approach for Large Language Models", 2023) summed over the outputs i,
  i.e. its structured form (Wanda-sp in An et al. 2024).
- "flap": Var(X_j) * ||W_:,j||_2^2, the fluctuation metric of FLAP (An et al.,
  "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024):
  what bias compensation cannot recover is the *fluctuation* of X_j around its mean, so a
  channel that is nearly constant is cheap to remove. FLAP standardises the channel scores
  of each layer ((s - mean) / std over the layer's input channels) before ranking all
  layers together, and a head scores by the mean of its channels' standardised scores;
  the planner's "standard" normalization does that and is the default for "flap".
  Standardising the head scores themselves instead (3 KV heads a layer in SmolLM2) puts
  the lowest head of every layer near -1.2 whatever it carries, below most MLP channels,
  so a budget took a third of the attention of nearly every layer first.

- "obs": the Optimal Brain Surgeon saliency of the class (Hassibi & Stork 1993; per
  structure as ZipLM, Kurtic et al. 2023, and SlimGPT, Ling et al. 2024, rank it): the
  output error left when the class's features go and the rest repair it by least squares,
  tr(W_c^T [(C + lambda I)^-1]_cc^-1 W_c) with C the features' covariance (`lsq`'s repair,
  whose bias absorbs the mean). A channel the others predict well is cheap to remove even
  if it is large, which is what the least-squares compensation then exploits; with the
  covariance taken diagonal it is flap's score. Needs X^T X statistics (as lsq does);
  consumers without them (grouped Convs, patches too wide) score by flap.
- "obs-greedy": the same saliency, but classes removed one at a time with the repair and
  the inverse updated after each (ZipLM's greedy structured OBS, `greedy_obs`); scores are
  the slopes of each layer's error path, comparable across layers, so `--global` with the
  default normalization "none" allocates the removal between layers.

- "fisher" and "obs-fisher" look at the model's *output* (Kwon et al., "A Fast Post-Training
  Pruning Framework for Transformers", 2022): "fisher" is the empirical Fisher of a mask on
  the channel, the expected squared change of the outputs when it goes, sum over samples of
  (dL/dm_c)^2 for random projections L of the outputs; "obs-fisher" is obs with the
  consumer's output error weighted by G, the Gram matrix of dL/dy at its output:
  tr(W_c^T [C^-1]_cc^-1 W_c G). Both come from gradients through the torch lowering
  (`recovery.fisher`, via `api.sensitivity`), in units of the output, so that layers rank
  together (`--global --normalization none`).

A class touching several consumers (a residual stream read by many convs) sums their
scores (`reduction` "mean" or "max" as for the magnitude criteria); positions of one
class (the features a Flatten makes of one channel) are summed.

Experts (groups of kind "experts") score by routing under every calibrated criterion:
routing frequency x gate x output norm, EASY-EP-style (`graphprune.posttrain.routing`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ..core.analysis import Analysis
from ..errors import GraphpruneError
from .compensation import weight_matrix
from .greedy_obs import greedy_scores
from .statistics import CalibrationStats, Consumer, Moments

OUTPUT_AWARE = ("fisher", "obs-fisher")  # need `stats.fisher` (gradients: `recovery.fisher`)
# Need X^T X of the consumer's input (the repair the OBS saliency assumes).
SCATTER = ("obs", "obs-greedy", "obs-fisher")
CALIBRATED = ("activation", "wanda", "flap", "obs", "obs-greedy", *OUTPUT_AWARE)
OBS_DAMP = 0.01  # the damping of the saliency's inverse, x mean(diag C) (lsq's default)


def calibrated_scores(
    analysis: Analysis,
    stats: CalibrationStats | None,
    criterion: str,
    reduction: str = "sum",
    *,
    standardize: bool = False,
) -> np.ndarray:
    """Scores indexed by class id; NaN for classes no calibrated consumer reads.
    `standardize`: each consumer's position scores are standardised (`LayerReduction`)."""
    if stats is None:
        raise GraphpruneError(
            f"criterion {criterion!r} needs calibration data (--calib FILE or --calib-random N)"
        )
    layers = LayerReduction(analysis, standardize=standardize)
    for consumer in stats.consumers:
        layers.add(consumer.positions, _position_scores(analysis, stats, consumer, criterion))
    for tap in stats.taps:
        if tap.router in stats.routing:
            layers.add(tap.atoms, stats.routing[tap.router])
    return layers.result(reduction)


class LayerReduction:
    """Per-layer contributions to each class's score, reduced across the layers of a group
    (DepGraph's group reduction): "sum", "mean" or "max"; NaN where no layer contributed.

    A layer's positions of one class sum; with `standardize` (FLAP's normalization) each
    layer's position scores are standardised first and a class takes their mean, so a
    class's score says how it stands among the channels of that layer, whatever the
    number of positions a class spans (a head's 64 to 192 against an MLP unit's one)."""

    def __init__(self, analysis: Analysis, *, standardize: bool = False) -> None:
        self.standardize = standardize
        self.class_of = analysis.class_of
        n_classes = analysis.group_of_class.shape[0]
        self.total = np.zeros(n_classes)
        self.count = np.zeros(n_classes)
        self.peak = np.full(n_classes, -np.inf)

    def add(self, atoms: np.ndarray, per_position: np.ndarray) -> None:
        """One layer: the score of each position of `atoms` (positions of one class sum)."""
        classes = self.class_of[atoms.ravel()]
        n_classes = self.total.shape[0]
        if self.standardize:
            per_position = standardize(np.asarray(per_position, dtype=np.float64))
        per_class = np.bincount(classes, weights=per_position, minlength=n_classes)
        positions = np.bincount(classes, minlength=n_classes)
        touched = positions > 0
        if self.standardize:
            per_class = np.where(touched, per_class / np.maximum(positions, 1), 0.0)
        self.total += per_class
        self.count += touched
        self.peak = np.where(touched, np.maximum(self.peak, per_class), self.peak)

    def result(self, reduction: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            if reduction == "sum":
                return np.where(self.count > 0, self.total, np.nan)
            if reduction == "mean":
                return self.total / self.count
            return np.where(self.count > 0, self.peak, np.nan)


def _position_scores(
    analysis: Analysis, stats: CalibrationStats, consumer: Consumer, criterion: str
) -> np.ndarray:
    view = analysis.view
    weight = view.constant(view.nodes[consumer.node].input[1]).astype(np.float64)
    power = 1 if criterion == "wanda" else 2
    magnitude = np.abs(weight) ** power
    if consumer.grouped:
        groups, per_group = consumer.positions.shape
        rows = magnitude.reshape(groups, magnitude.shape[0] // groups, per_group, -1)
        columns = rows.sum(axis=(1, 3)).ravel()
    else:
        axis = consumer.weight_axis
        columns = np.moveaxis(magnitude, axis, 0).reshape(magnitude.shape[axis], -1).sum(axis=1)
    moments = stats.channels(consumer)
    if moments.n == 0 or moments.mean.shape[0] != columns.shape[0]:
        raise GraphpruneError(
            f"calibration statistics of '{consumer.node}' do not match its weight"
        )
    features = stats.features(consumer)
    if criterion in OUTPUT_AWARE:
        if consumer.node not in stats.fisher:
            raise GraphpruneError(
                f"criterion {criterion!r} needs the output gradients of '{consumer.node}' "
                "(graphprune.api.sensitivity; whole-model calibration: --calib-mode whole)"
            )
        gram = stats.output_gram.get(consumer.node)  # None: no output depends on it
        if criterion == "fisher" or features is None or features.scatter is None or gram is None:
            return stats.fisher[consumer.node]
        return obs_scores(analysis, consumer, features, gram)
    if criterion.startswith("obs") and features is not None and features.scatter is not None:
        if criterion == "obs-greedy":  # removal one class at a time (greedy_obs)
            return greedy_scores(analysis, consumer, features)
        return obs_scores(analysis, consumer, features)
    if criterion in ("flap", "obs", "obs-greedy"):
        return moments.variance * columns
    if criterion == "wanda":
        return moments.rms * columns
    return moments.rms * np.sqrt(columns)


def obs_scores(
    analysis: Analysis, consumer: Consumer, features: Moments, metric: np.ndarray | None = None
) -> np.ndarray:
    """The OBS saliency of each class, shared out evenly over its positions. `metric`: the
    (outputs, outputs) cost of the consumer's output error, G (`obs-fisher`); identity
    when None: tr(W_c^T [C^-1]_cc^-1 W_c G)."""
    weight, _ = weight_matrix(analysis, consumer)
    weighted = weight if metric is None else weight @ metric
    covariance = features.covariance
    scale = float(np.mean(np.diag(covariance)))
    system = covariance + OBS_DAMP * (scale if scale > 0 else 1e-12) * np.eye(len(covariance))
    try:
        inverse = scipy.linalg.inv(system)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError) as error:
        raise GraphpruneError(f"'{consumer.node}': obs saliency failed: {error}") from None
    classes = analysis.class_of[consumer.positions.ravel()]
    size = consumer.geometry.size if consumer.geometry is not None else 1
    if size == 1 and np.unique(classes).size == classes.size:  # one feature per class
        return np.einsum("ij,ij->i", weight, weighted) / np.diag(inverse)
    of_feature = np.repeat(classes, size)
    scores = np.zeros(classes.size)
    for value in np.unique(classes):
        rows = np.nonzero(of_feature == value)[0]
        block = weight[rows]
        solved = scipy.linalg.solve(inverse[np.ix_(rows, rows)], block)
        saliency = np.einsum("ij,ij->", weighted[rows], solved)
        positions = classes == value
        scores[positions] = saliency / positions.sum()
    return scores


def standardize(values: np.ndarray) -> np.ndarray:
    """(s - mean) / std within one layer (FLAP's per-layer standardisation)."""
    if not values.size:  # a layer of no positions (a zero-sized dim)
        return values
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else values - values.mean()
