"""Choosing the least-squares damping by held-out error (`--damp auto`).

Least-squares compensation (`compensation.least_squares`) fits the kept features' update
D to the calibration data. With few calibration positions per feature the fit follows
that sample, not the distribution: its error on other text is larger than on the
calibration text. The damping lambda = damp * mean(diag C_SS) trades fit for stability,
and the right amount depends on the layer and the data. So it is measured: the samples
are split into k folds while collecting (`statistics.collect(folds=k)`: sample i in fold
i % k, so the split does not depend on the batch size), and for each fold the update
fitted on the other k-1 folds is scored on it. The damp with the least total held-out
error wins, per consumer, and the final update is fitted on all the data with it.
`math.inf` is a candidate: D = 0, which is bias compensation, so a layer whose lsq update
does not generalise falls back to bias instead of getting worse than it.

Everything comes from the folds' moments (mean, covariance), never from stored rows. With
A the residual map (D on the kept rows, -W_R on the removed ones) and beta the bias shift
fitted on the training folds, the error on a fold with mean m and covariance C is
tr(A^T C A) + ||m A + beta||^2. One eigendecomposition of the training C_SS per fold makes
every candidate cost O(|S|^2): D = V diag(1/(ev + lambda)) V^T C_SR W_R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..errors import GraphpruneError
from .statistics import Moments

FOLDS = 4
CANDIDATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)


@dataclass(frozen=True)
class DampChoice:
    """The chosen damp (inf: bias compensation) and the held-out error of every candidate,
    relative to the error without compensation (1.0: as bad as removing the features)."""

    damp: float
    candidates: tuple[float, ...]
    errors: tuple[float, ...]

    @property
    def error(self) -> float:
        return self.errors[self.candidates.index(self.damp)]


def choose_damp(
    folds: list[Moments],
    weight: np.ndarray,
    kept: np.ndarray,
    candidates: tuple[float, ...] = CANDIDATES,
) -> DampChoice | None:
    """The candidate damp with the least k-fold held-out error for one consumer (features
    `kept` of `weight`'s rows stay); None with fewer than two non-empty folds."""
    used = [fold for fold in folds if fold.n > 0]
    if len(used) < 2:
        return None
    errors = np.zeros(len(candidates))
    lost = 0.0
    for index, held in enumerate(used):
        train = Moments.merged([fold for j, fold in enumerate(used) if j != index])
        fold_errors, energy = _fold_errors(train, held, weight, kept, candidates)
        errors += held.n * fold_errors
        lost += held.n * energy
    relative = errors / lost if lost > 0 else errors
    # The least error; among equal ones the largest damp (the most stable fit).
    best = max(range(len(candidates)), key=lambda i: (-relative[i], candidates[i]))
    return DampChoice(candidates[best], tuple(candidates), tuple(float(e) for e in relative))


def _fold_errors(
    train: Moments, held: Moments, weight: np.ndarray, kept: np.ndarray, candidates
) -> tuple[np.ndarray, float]:
    """Mean squared residual on `held` of the fit on `train`, per candidate, and the mean
    squared output that the removed features carried on `held` (the error of no repair)."""
    s, r = np.nonzero(kept)[0], np.nonzero(~kept)[0]
    c_train, c_held = train.covariance, held.covariance
    w_r = weight[r]
    c_ss = c_train[np.ix_(s, s)]
    if not (np.isfinite(c_ss).all() and np.isfinite(c_held).all()):
        raise GraphpruneError("least-squares compensation: NaN or inf in statistics")
    scale = float(np.mean(np.diag(c_ss))) if s.size else 0.0
    eigenvalues, vectors = scipy.linalg.eigh(c_ss)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    p = vectors.T @ (c_train[np.ix_(s, r)] @ w_r)  # D = V diag(1/(ev+lambda)) P
    g = vectors.T @ c_held[np.ix_(s, s)] @ vectors
    quadratic = g * (p @ p.T)  # tr(D^T C_SS D) = w^T (G * P P^T) w
    cross = np.einsum("ij,ij->i", p, vectors.T @ (c_held[np.ix_(s, r)] @ w_r))
    removed = float(np.einsum("ij,ij->", w_r, c_held[np.ix_(r, r)] @ w_r))
    shift_s = (held.mean[s] - train.mean[s]) @ vectors
    shift_r = (held.mean[r] - train.mean[r]) @ w_r
    errors = np.empty(len(candidates))
    for i, damp in enumerate(candidates):
        lam = damp * scale if scale > 0 else 1e-12
        w = np.zeros_like(eigenvalues) if math.isinf(damp) else 1.0 / (eigenvalues + lam)
        mean_residual = (shift_s * w) @ p - shift_r
        errors[i] = w @ quadratic @ w - 2 * (w @ cross) + removed + mean_residual @ mean_residual
    energy = removed + float(np.sum((held.mean[r] @ w_r) ** 2))
    return errors, energy


def residual_error(
    moments: Moments, weight: np.ndarray, kept: np.ndarray, delta: np.ndarray, shift: np.ndarray
) -> float:
    """E||x_S D + shift - x_R W_R||^2 / E||x_R W_R||^2 over `moments`: how much of the
    removed features' output a compensation (delta on the kept rows, shift; zeros for
    none) leaves unrepaired on that data (1.0: none of it repaired)."""
    residual = np.where(kept[:, None], delta, -weight)
    covariance = moments.covariance
    mean_residual = moments.mean @ residual + shift
    error = np.einsum("ij,ij->", residual, covariance @ residual) + mean_residual @ mean_residual
    lost = weight[~kept]
    removed = covariance[np.ix_(~kept, ~kept)]
    energy = np.einsum("ij,ij->", lost, removed @ lost) + np.sum((moments.mean[~kept] @ lost) ** 2)
    return float(error / energy) if energy > 0 else float(error)
