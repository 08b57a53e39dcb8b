"""Greedy structured OBS: remove a consumer's classes one at a time ("obs-greedy").

"obs" (`criteria.obs_scores`) scores every class once, as if it alone went, and keeps the
top ones; but once some classes are gone the others' saliencies change (a channel the
removed ones predicted becomes precious, one they duplicated becomes cheap). ZipLM
(Kurtic et al., NeurIPS 2023) and OBC (Frantar & Alistarh, 2022) therefore remove one
structure at a time: each step takes the class whose removal, with the optimal
least-squares update of the remaining rows of the weight, costs least, then updates the
weight and downdates the inverse Hessian (the Schur complement) before the next step.

With H = C + lambda I (C the features' covariance, `lsq`'s damping; the bias absorbs
the mean) and W the (features, outputs) weight, removing the feature block B costs
tr(W_B^T [H^-1]_BB^-1 W_B); the repair is W -= H^-1[:, B] [H^-1]_BB^-1 W_B and
H^-1 -= H^-1[:, B] [H^-1]_BB^-1 H^-1[B, :]. After k steps W's kept rows are exactly
`compensation.least_squares`'s repair of the removed set, and the summed step costs are
that repair's (damped) output error, so the path is a sequence of lsq solutions.

Scores (`path_scores`): the path runs to the end, so every class has a removal step and
the top-k by score are exactly the greedy set for every k. The score of the class removed
at step k is the slope, at k, of the lower convex hull of the cumulative error E(k)
relative to the layer's output energy tr(W^T C W), the error of removing everything
(bias compensated). Slopes are non-decreasing along the path, so within a layer they keep
its order, and across layers (`--global --normalization none`, the default for this
criterion) ranking them together removes, in every layer, a prefix of its path, choosing
the prefixes that minimise the sum of the layers' relative errors for the total removed
(exact at the hull's vertices; the marginal-cost allocation of a separable convex
problem). That is the per-layer allocation: a layer whose channels are redundant gives
more of them.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from ..core.analysis import Analysis
from ..errors import GraphpruneError
from .compensation import weight_matrix
from .statistics import Consumer, Moments

SELECT_DAMP = 0.01  # the damping of H while choosing, x mean(diag C) (as "obs")


def greedy_scores(analysis: Analysis, consumer: Consumer, features: Moments) -> np.ndarray:
    """The consumer's position scores: each class's `path_scores`, shared out evenly over
    its positions (a class's positions sum when the planner reduces them)."""
    weight, _ = weight_matrix(analysis, consumer)
    covariance = features.covariance
    classes = analysis.class_of[consumer.positions.ravel()]
    size = consumer.geometry.size if consumer.geometry is not None else 1
    of_feature = np.repeat(classes, size)
    values, counts = np.unique(classes, return_counts=True)
    blocks = [np.nonzero(of_feature == value)[0] for value in values]
    order, costs = greedy_path(weight, covariance, blocks, SELECT_DAMP)
    energy = float(np.einsum("ij,ij->", weight, covariance @ weight))
    per_class = path_scores(order, costs, energy)
    index = np.searchsorted(values, classes)
    return per_class[index] / counts[index]


def greedy_path(
    weight: np.ndarray, covariance: np.ndarray, blocks: list[np.ndarray], damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """(order, costs): the blocks (each an array of feature indices, rows of `weight`) in
    greedy removal order, and the error each step adds (damped, see module doc)."""
    n = covariance.shape[0]
    if not blocks:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    scale = float(np.mean(np.diag(covariance))) if n else 0.0
    system = covariance + damp * (scale if scale > 0 else 1e-12) * np.eye(n)
    if not (np.isfinite(system).all() and np.isfinite(weight).all()):
        raise GraphpruneError("obs-greedy: NaN or inf in statistics or weights")
    try:
        # Cholesky: H is positive definite, and scipy.linalg.inv is many times slower here
        inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(system), np.eye(n))
        inverse = np.ascontiguousarray((inverse + inverse.T) / 2)  # C order, for _remove
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError) as error:
        raise GraphpruneError(f"obs-greedy: inverse failed: {error}") from None
    w = weight.astype(np.float64, copy=True)
    # blocks of one size are scored together: (blocks, size) index arrays per size
    sizes = np.array([len(b) for b in blocks])
    by_size = {s: np.nonzero(sizes == s)[0] for s in np.unique(sizes).tolist()}
    rows_of = {s: np.stack([blocks[i] for i in ids]) for s, ids in by_size.items()}
    alive = np.ones(len(blocks), dtype=bool)
    order = np.zeros(len(blocks), dtype=np.int64)
    costs = np.zeros(len(blocks))
    gone = np.zeros(n, dtype=bool)  # rows of w and inverse removed, dropped when half are
    for step in range(len(blocks)):
        best, best_cost, best_size = -1, np.inf, 0
        for s, ids in by_size.items():
            live = alive[ids]
            if not live.any():
                continue
            step_costs = _costs(inverse, w, rows_of[s][live])
            pick = int(np.argmin(step_costs))
            if step_costs[pick] < best_cost or best < 0:
                best, best_cost, best_size = int(ids[live][pick]), float(step_costs[pick]), s
        order[step], costs[step] = best, max(best_cost, 0.0)
        alive[best] = False
        rows = rows_of[best_size][np.searchsorted(by_size[best_size], best)]
        _remove(inverse, w, rows)
        gone[rows] = True
        if 2 * gone.sum() >= len(gone) and not gone.all():  # smaller matrices from now on
            keep = ~gone
            inverse, w = inverse[np.ix_(keep, keep)], w[keep]
            moved = np.cumsum(keep) - 1  # old row -> new row (removed rows: never read again)
            rows_of = {s: moved[rows] for s, rows in rows_of.items()}
            gone = np.zeros(len(w), dtype=bool)
    return order, costs


def _costs(inverse: np.ndarray, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """tr(W_B^T [H^-1]_BB^-1 W_B) for every candidate block B (a row of `rows`)."""
    if rows.shape[1] == 1:
        index = rows[:, 0]
        return np.einsum("ij,ij->i", w[index], w[index]) / np.diag(inverse)[index]
    blocks = inverse[rows[:, :, None], rows[:, None, :]]  # (k, s, s)
    values = w[rows]  # (k, s, d)
    solved = np.linalg.solve(blocks, values)
    return np.einsum("ksd,ksd->k", values, solved)


def _remove(inverse: np.ndarray, w: np.ndarray, rows: np.ndarray) -> None:
    """The OBS update for removing `rows`, in place: repair W, downdate H^-1."""
    columns = inverse[:, rows]  # a copy (fancy indexing)
    if len(rows) == 1:
        # one rank-1 pass over H^-1 in place (dger; H^-1 is symmetric, its transpose is
        # the Fortran-ordered array BLAS updates): the n x n temporary would cost 3 passes
        column = columns[:, 0]
        pivot = column[rows[0]]
        w -= np.outer(column / pivot, w[rows[0]])
        updated = scipy.linalg.blas.dger(-1.0 / pivot, column, column, a=inverse.T,
                                         overwrite_a=True)  # fmt: skip
        if not np.shares_memory(updated, inverse):  # not updated in place: copy back
            inverse[...] = updated.T
    else:
        block = inverse[np.ix_(rows, rows)]
        w -= columns @ np.linalg.solve(block, w[rows])
        inverse -= columns @ np.linalg.solve(block, columns.T)
    w[rows] = 0.0  # exactly gone (the update leaves rounding there)
    inverse[rows, :] = 0.0
    inverse[:, rows] = 0.0
    inverse[rows, rows] = 1.0  # keeps later solves on these rows harmless; never chosen


def path_scores(order: np.ndarray, costs: np.ndarray, energy: float) -> np.ndarray:
    """Per block: the lower-convex-hull slope of the relative cumulative error at the step
    that removes it, made strictly increasing along the path (see module doc)."""
    steps = len(order)
    cumulative = np.concatenate([[0.0], np.cumsum(costs)]) / (energy if energy > 0 else 1.0)
    slopes = hull_slopes(cumulative)
    for k in range(1, steps):  # ties (a straight stretch of the hull) keep the path order
        slopes[k] = max(slopes[k], np.nextafter(slopes[k - 1], np.inf))
    scores = np.zeros(steps)
    scores[order] = slopes
    return scores


def hull_slopes(values: np.ndarray) -> np.ndarray:
    """Slopes of the lower convex hull of the points (k, values[k]), one per unit step
    [k, k+1] (so len(values) - 1 of them); non-decreasing."""
    hull: list[int] = []
    for k in range(len(values)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord a -> k: not a vertex of the lower hull
            if (values[b] - values[a]) * (k - a) >= (values[k] - values[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(k)
    slopes = np.zeros(max(len(values) - 1, 0))
    for a, b in itertools.pairwise(hull):
        slopes[a:b] = (values[b] - values[a]) / (b - a)
    return slopes
