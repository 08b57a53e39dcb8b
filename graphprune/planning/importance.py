"""Channel importance: one score per class, aggregated over every weight in its group.

Magnitude criteria follow DepGraph (Fang et al., CVPR 2023): each weight slice that
removal deletes contributes sum |w|^p over the slice (p = 1 for "l1", 2 for "l2"), the
contributions of one class are reduced over the layers of its group (sum, mean or max) and
normalised within the group, so that scores of different groups can be ranked together.
"bn" uses |gamma| of the BatchNormalization scales in the group (Liu et al., Network
Slimming, ICCV 2017); exporters usually fold BatchNorm into Conv, and groups without one
fall back to "l2". "random" is the usual sanity baseline. "activation", "wanda" and
"flap" weigh the consumers' weights by calibration statistics (`graphprune.criteria`);
classes no calibrated consumer reads fall back to "l2".

Normalizations make groups comparable: "mean", "max" and "sum" divide a group's class
scores by that statistic; "standard" (FLAP's) standardises each layer's channel scores
before they are reduced, and a class takes the mean of its channels' (`LayerReduction`).
"""

from __future__ import annotations

import numpy as np

from ..core.analysis import Analysis
from ..core.channels import Quantized, SliceConstant, SliceGroupedInput
from ..core.dequantize import dequantize
from ..errors import GraphpruneError
from ..posttrain.criteria import CALIBRATED, LayerReduction, calibrated_scores

CRITERIA = ("l1", "l2", "bn", "random", *CALIBRATED)
REDUCTIONS = ("sum", "mean", "max")
NORMALIZATIONS = ("mean", "max", "sum", "standard", "none")


def default_normalization(criterion: str) -> str:
    """FLAP's "standard" for "flap"; "none" for "obs-greedy", whose scores are already
    comparable across layers (relative error slopes); "mean" otherwise."""
    return {"flap": "standard", "obs-greedy": "none"}.get(criterion, "mean")


def class_scores(
    analysis: Analysis,
    criterion: str = "l2",
    reduction: str = "mean",
    normalization: str = "mean",
    seed: int = 0,
    stats=None,
) -> tuple[np.ndarray, list[int]]:
    """Scores indexed by class id, and the groups where "bn" or a calibrated criterion
    fell back to "l2". `stats` (`graphprune.calibration.collect`) feeds the calibrated
    criteria; `normalization=None` means `default_normalization(criterion)`."""
    if normalization is None:
        normalization = default_normalization(criterion)
    for value, allowed, what in (
        (criterion, CRITERIA, "criterion"),
        (reduction, REDUCTIONS, "reduction"),
        (normalization, NORMALIZATIONS, "normalization"),
    ):
        if value not in allowed:
            raise GraphpruneError(f"unknown {what} {value!r} (choose from {', '.join(allowed)})")
    n_classes = analysis.group_of_class.shape[0]
    if criterion == "random":
        return np.random.default_rng(seed).random(n_classes), []
    fallback: list[int] = []
    # "standard" standardises each layer's position scores (FLAP), not the class scores.
    per_layer = normalization == "standard"
    if criterion in ("bn", *CALIBRATED):
        if criterion == "bn":
            scores = _reduce(analysis, {"bn_scale"}, 1, reduction, standardize=per_layer)
        else:
            scores = calibrated_scores(
                analysis, stats, criterion, reduction, standardize=per_layer
            )
        has_bn = np.zeros(len(analysis.groups), dtype=bool)
        covered = ~np.isnan(scores)
        has_bn[np.unique(analysis.group_of_class[covered & (analysis.group_of_class >= 0)])] = True
        fallback = [g.id for g in analysis.groups if g.prunable and not has_bn[g.id]]
        if fallback:
            l2 = _reduce(analysis, {"weight"}, 2, reduction, standardize=per_layer)
            use_l2 = np.isin(analysis.group_of_class, fallback)
            scores = np.where(use_l2, l2, scores)
    else:
        power = 1 if criterion == "l1" else 2
        scores = _reduce(analysis, {"weight"}, power, reduction, standardize=per_layer)
    scores = np.nan_to_num(scores, nan=0.0)
    return _normalize(analysis, scores, normalization), fallback


def _reduce(
    analysis: Analysis, roles: set[str], p: int, reduction: str, *, standardize: bool = False
) -> np.ndarray:
    layers = LayerReduction(analysis, standardize=standardize)
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant | SliceGroupedInput) or edit.role not in roles:
            continue
        node = analysis.view.nodes[edit.node]
        value = analysis.view.constant(node.input[edit.input_index])
        if value is None:
            continue
        if edit.quantized is not None:  # rank by the real values
            value = _dequantized(analysis.view, node, edit.quantized, value)
        if isinstance(edit, SliceGroupedInput):
            magnitude = np.abs(value.astype(np.float64)) ** p
            groups, per_group = edit.atoms.shape
            rows = magnitude.reshape(groups, magnitude.shape[0] // groups, per_group, -1)
            per_position = rows.sum(axis=(1, 3)).ravel()
        else:
            per_position = _position_norms(np.moveaxis(value, edit.axis, 0), p)
        layers.add(edit.atoms, per_position)
    return layers.result(reduction)


def _dequantized(view, node, quant: Quantized, value: np.ndarray) -> np.ndarray:
    def read(index):
        name = None if index is None else view.input(node, index)
        return None if name is None else view.constant(name)

    return dequantize(value, quant, read(quant.scale), read(quant.zero_point))


_CHUNK_ELEMENTS = 1 << 22


def _position_norms(value: np.ndarray, p: int) -> np.ndarray:
    """sum |v|^p over all but axis 0, in float64, a block of positions at a time: a large
    weight never has a float64 copy of its own size (each position's sum is unchanged)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, value[0].size)) if len(value) else 1
    blocks = [
        (np.abs(value[i : i + step].astype(np.float64)) ** p)
        .reshape(len(value[i : i + step]), -1)
        .sum(axis=1)
        for i in range(0, len(value), step)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0)


def _normalize(analysis: Analysis, scores: np.ndarray, normalization: str) -> np.ndarray:
    if normalization in ("none", "standard"):  # "standard": per layer, while reducing
        return scores
    out = scores.copy()
    for group in analysis.groups:
        values = scores[group.classes]
        if not values.size:  # a group of no channels (a zero-sized dim): nothing to scale
            continue
        scale = {"mean": values.mean(), "max": values.max(), "sum": values.sum()}[normalization]
        if scale > 0:
            out[group.classes] = values / scale
    return out
