"""Every reference architecture, from both torch exporters, pruned at 50%: the oracle
holds, output shapes are unchanged, and the removed share of parameters does not regress.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.core.metrics import count_params
from graphprune.planning.plan import GroupChoice, Plan
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.export import cached
from models.zoo import ZOO

# Parameters removed at ratio 0.5 (group L2, classifier kept), measured when written; a
# drop means a group became unprunable. Torch-Pruning 1.6.1 removes ~74% of ResNet-18's.
MIN_REMOVED = {
    "resnet18": 0.735, "resnet_tiny": 0.74, "resnet_bottleneck": 0.70, "resnext": 0.71,
    "mobilenetv2": 0.54, "mobilenetv3": 0.60, "efficientnet": 0.56, "regnet": 0.59,
    "densenet": 0.59, "inception": 0.56, "shufflenetv2": 0.54, "ghostnet": 0.56,
    "yolov8": 0.72, "unet": 0.74, "convnext": 0.26, "vgg": 0.74,
}  # fmt: skip
CASES = [(name, exporter) for name in ZOO for exporter in ("dynamo", "classic")]


def test_every_zoo_model_has_a_threshold():
    assert set(MIN_REMOVED) == set(ZOO)


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_zoo_model_prunes_exactly(name, exporter):
    model = gp.load(cached(name, exporter))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=3)
    original_out, pruned_out = outputs(model, feeds), outputs(pruned, feeds)
    assert [o.shape for o in original_out] == [o.shape for o in pruned_out]
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), pruned_out)
    removed = 1 - count_params(pruned) / count_params(model)
    assert removed >= MIN_REMOVED[name]


def test_oracle_catches_wrong_slices():
    """Shift the removed channels of one group by one in the rewrite only: the masked
    original and the pruned model must then disagree."""
    model = gp.load(cached("resnet_tiny", "classic"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, 0.5)
    feeds = random_inputs(model, input_shapes(model), seed=3)
    masked_out = outputs(gp.mask(analysis, plan), feeds)
    choice = plan.choices[1]
    channels = analysis.groups[choice.group].channels
    shifted = sorted({(i + 1) % channels for i in choice.removed})
    wrong = [GroupChoice(choice.group, shifted, []), *plan.choices[:1], *plan.choices[2:]]
    classes = np.concatenate([analysis.groups[c.group].classes[c.removed] for c in wrong])
    wrong_plan = Plan(wrong, np.sort(classes))
    pruned_out = outputs(gp.prune(analysis, wrong_plan), feeds)
    with pytest.raises(AssertionError):
        assert_same_outputs(masked_out, pruned_out)


def test_pruning_is_deterministic():
    path = cached("yolov8", "dynamo")
    first, second = (gp.load(path) for _ in range(2))
    results = []
    for model in (first, second):
        analysis = gp.analyze(model)
        results.append(
            gp.prune(analysis, gp.plan(analysis, 0.3)).SerializeToString(deterministic=True)
        )
    assert results[0] == results[1]


def test_plan_is_recorded_in_metadata():
    model = gp.load(cached("resnet_tiny", "dynamo"))
    analysis = gp.analyze(model)
    pruned = gp.prune(analysis, gp.plan(analysis, 0.5))
    keys = {p.key for p in pruned.metadata_props}
    assert "graphprune.plan" in keys
    onnx.checker.check_model(pruned, full_check=True)


def test_approximate_norms_prune_through_layer_norm_and_say_so():
    """ConvNeXt's residual stream is normalized by LayerNorm over channels: exact pruning
    keeps it; the opt-in removes it like Torch-Pruning (65.6% of parameters there)."""
    model = gp.load(cached("convnext", "dynamo"))
    exact = gp.analyze(model)
    approximate = gp.analyze(model, approximate_norms=True)
    assert len(approximate.prunable_groups) > len(exact.prunable_groups)
    assert any(g.approximations for g in approximate.prunable_groups)
    assert not any(g.approximations for g in exact.groups)
    pruned = gp.prune(approximate, gp.plan(approximate, 0.5))
    assert 1 - count_params(pruned) / count_params(model) >= 0.655
    result = gp.validate(model, pruned)
    assert result["outputs"][0]["shape"] == [1, 1000]
