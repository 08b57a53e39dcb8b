"""Zero-sized dims in analysis, planning, calibration and compensation: a layer of no
channels is a group that cannot be pruned (and says why); every criterion, reduction and
normalization scores the other groups as before, without warnings; calibration and
least-squares repair go through empty weights and activations; the pruned models match
the masking oracle. The models are the zero-sized variants of the hostile-input suite."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fuzz_models import ZERO_DIMS, attention_net
from oracle import assert_same_outputs, outputs, prune_and_check

import graphprune as gp
from graphprune.api import sensitivity
from graphprune.planning.importance import CRITERIA, NORMALIZATIONS, REDUCTIONS, class_scores
from graphprune.posttrain.criteria import CALIBRATED, OUTPUT_AWARE
from graphprune.runtime.inputs import input_shapes, random_inputs


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" and the like fail the test
        yield


def _calibration(model):
    shapes = {name: shape[1:] for name, shape in input_shapes(model).items()}
    return gp.CalibrationData(random=4, shapes=shapes, seed=0)


def test_a_layer_of_no_channels_is_a_group_that_says_why():
    analysis = gp.analyze(gp.load(attention_net(hidden=0)))
    empty = [group for group in analysis.groups if group.channels == 0]
    assert [group.name for group in empty] == ["up"]
    assert [str(reason) for reason in empty[0].reasons] == ["has no channels (a zero-sized dim)"]
    assert len(analysis.prunable_groups) == 2  # down and query, as with 32 hidden channels


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_around_an_empty_group(criterion):
    model = gp.load(attention_net(hidden=0))
    analysis = gp.analyze(model)
    stats = gp.calibrate(analysis, _calibration(model), scatter=criterion.startswith("obs")) if (
        criterion in CALIBRATED) else None  # fmt: skip
    if criterion in OUTPUT_AWARE:  # the output gradients, through the torch lowering
        sensitivity(analysis, _calibration(model), stats)
    for reduction in REDUCTIONS:
        for normalization in NORMALIZATIONS:
            scores, _ = class_scores(analysis, criterion, reduction, normalization, stats=stats)
            prunable = np.concatenate([g.classes for g in analysis.prunable_groups])
            assert np.isfinite(scores[prunable]).all()


@pytest.mark.parametrize(
    "name", ["attention hidden 0", "attention side branch of 0 outputs", "conv classes 0",
             "conv split into 8 and 0", "conv concat of an empty constant"]
)  # fmt: skip
@pytest.mark.parametrize("global_ranking", [False, True])
def test_pruning_around_zero_sized_dims_matches_the_oracle(name, global_ranking):
    analysis, plan, pruned = prune_and_check(ZERO_DIMS[name](), 0.5, global_ranking=global_ranking)
    assert plan.removed_classes.size > 0
    assert all(g.channels > 0 for g in analysis.prunable_groups)
    gp.validate(analysis.view.model, pruned)


@pytest.mark.parametrize("method", ["bias", "lsq"])
@pytest.mark.parametrize("criterion", ["activation", "wanda", "flap"])
def test_calibrated_repair_through_an_empty_weight(method, criterion):
    """The side MatMul reads the pruned group through a [16, 0] weight: its statistics,
    its compensation and its slice are all empty, and nothing else changes."""
    model = gp.load(ZERO_DIMS["attention side branch of 0 outputs"]())
    analysis = gp.analyze(model)
    stats = gp.calibrate(analysis, _calibration(model), scatter=method == "lsq")
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.25, criterion=criterion), stats=stats)
    repaired = gp.compensate(analysis, plan, stats, method=method)
    down = next(group for group in analysis.groups if group.name == "down")
    kept = down.channels - int(np.isin(down.classes, plan.removed_classes).sum())
    assert 0 < kept < down.channels
    dims = {tensor.name: list(tensor.dims) for tensor in repaired.graph.initializer}
    assert dims["w0"] == [kept, 0] and dims["wq"][0] == kept
    feeds = random_inputs(model, input_shapes(model), seed=3)
    assert [o.shape for o in outputs(repaired, feeds)] == [o.shape for o in outputs(model, feeds)]


def test_the_oracle_still_sees_a_wrong_slice_next_to_an_empty_weight():
    """The oracle comparison is not vacuous on these models: a pruned model whose kept
    channels differ from the plan's fails it."""
    model = gp.load(ZERO_DIMS["attention side branch of 0 outputs"]())
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5))
    other = gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="random", seed=3))
    assert not np.array_equal(plan.removed_classes, other.removed_classes)
    feeds = random_inputs(model, input_shapes(model), seed=1)
    with pytest.raises(AssertionError):
        assert_same_outputs(outputs(gp.mask(analysis, plan), feeds),
                            outputs(gp.prune(analysis, other), feeds))  # fmt: skip
