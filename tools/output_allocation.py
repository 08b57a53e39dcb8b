"""How many channels each group loses under one total, from the output cost of removing them.

Ranking single-channel saliencies of all layers together (`--global`) adds up costs that
do not add: the least-squares repair of one layer recovers the first channels removed
well and the last ones badly, so summed saliencies put far too many removals in some
layers. Here every group gets a cost curve instead: removing its r lowest-scored channels
and repairing the rest by least squares (`compensation.least_squares`) leaves the output
error tr(W_R^T ([(C + lambda I)^-1]_RR)^-1 W_R G) in its consumers (OBS for a set of
columns), with G the Gram matrix of the gradient of random projections of the model's
output at the consumer's output (`recovery.fisher`), so that the curves of different
layers are in one unit, the expected squared change of the output. A dynamic program
over the groups then picks the removal counts (multiples of `step`) with the least total
cost under the total to remove.

A benchmark tool (`bench_calib_heldout.py NAME:output`), not in the library: on MiniLM it
only traded one held-out kind against the others (BENCHMARKS, issue 18).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from graphprune.core.analysis import Analysis, Group
from graphprune.errors import GraphpruneError
from graphprune.posttrain.compensation import weight_matrix
from graphprune.posttrain.statistics import CalibrationStats


def cost_curves(
    analysis: Analysis,
    stats: CalibrationStats,
    groups: list[Group],
    scores: np.ndarray,
    *,
    step: int,
    max_ratio: float = 0.9,
    damp: float = 0.01,
) -> dict[int, np.ndarray]:
    """Per group: the output cost of removing its 0, step, 2 step, ... lowest-scored
    channels (`scores` by class id), up to `max_ratio` of them."""
    curves = {}
    for group in groups:
        order = group.classes[np.argsort(scores[group.classes], kind="stable")]
        counts = range(0, int(group.channels * max_ratio) + 1, step)
        curves[group.id] = np.zeros(len(counts))
        for consumer in stats.consumers:
            classes = analysis.class_of[consumer.positions.ravel()]
            if not np.isin(classes, group.classes).any():
                continue
            features = stats.features(consumer)
            if features is None or features.scatter is None or consumer.node not in (
                stats.output_gram
            ):
                raise GraphpruneError(
                    f"'{consumer.node}': the output allocation needs X^T X and output gradients"
                )
            size = consumer.geometry.size if consumer.geometry is not None else 1
            weight, _ = weight_matrix(analysis, consumer)
            covariance = features.covariance
            scale = float(np.mean(np.diag(covariance))) or 1e-12
            inverse = scipy.linalg.inv(covariance + damp * scale * np.eye(len(covariance)))
            weighted = weight @ stats.output_gram[consumer.node]
            of_feature = np.repeat(classes, size)
            for index, count in enumerate(counts):
                rows = np.nonzero(np.isin(of_feature, order[:count]))[0]
                if rows.size:
                    solved = scipy.linalg.solve(inverse[np.ix_(rows, rows)], weight[rows],
                                                assume_a="pos")  # fmt: skip
                    curves[group.id][index] += np.einsum("ij,ij->", weighted[rows], solved)
    return curves


def allocate(curves: dict[int, np.ndarray], total: int, step: int) -> dict[int, int]:
    """The removal count of each group (a multiple of `step`) whose costs sum least, with
    `total // step` steps in all (a dynamic program over the groups)."""
    budget = total // step
    ids = list(curves)
    best = np.full(budget + 1, np.inf)
    best[0] = 0.0
    choice = []
    for gid in ids:
        curve = curves[gid]
        new = np.full(budget + 1, np.inf)
        taken = np.zeros(budget + 1, dtype=np.int64)
        for used in range(budget + 1):
            for steps in range(min(len(curve) - 1, used) + 1):
                value = best[used - steps] + curve[steps]
                if value < new[used]:
                    new[used], taken[used] = value, steps
        best = new
        choice.append(taken)
    if not np.isfinite(best[budget]):
        raise GraphpruneError("the groups cannot lose that many channels")
    counts, used = {}, budget
    for gid, taken in zip(reversed(ids), reversed(choice), strict=True):
        counts[gid] = int(taken[used]) * step
        used -= int(taken[used])
    return counts
