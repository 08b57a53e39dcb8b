"""`graphprune.torch.apply_plan`: the plan of a prune, applied to the torch module the model
was exported from. The oracle: the pruned module, run in torch and exported again with the
same exporter, computes what graphprune's pruned ONNX model computes (onnxruntime, same
inputs), and its export reads as many weights per layer."""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from bench_torch_plan import weights_by_use
from torch import nn

import graphprune as gp
from graphprune.core.slices import constant_uses, kept_indices
from graphprune.runtime.sessions import run, session
from graphprune.torch import apply_plan, plan_record
from models.transformers_zoo import TRANSFORMERS, example_input

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export(module: nn.Module, args: tuple, exporter: str) -> onnx.ModelProto:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(module, args, dynamo=True, verbose=False, opset_version=18)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=17)
        return onnx.load_from_string(buffer.getvalue())


def assert_matches(module, pruned_module, args, exporter, pruned: onnx.ModelProto) -> None:
    feeds = {info.name: a.numpy() for info, a in zip(pruned.graph.input, args, strict=True)}
    expected = run(session(pruned, "CPUExecutionProvider"), feeds)
    with torch.no_grad():
        in_torch = pruned_module(*args)
    scale = max(float(np.abs(e).max()) for e in expected)
    np.testing.assert_allclose(in_torch.numpy(), expected[0], atol=1e-4 * scale, rtol=0)
    again = export(pruned_module, args, exporter)
    actual = run(session(again, "CPUExecutionProvider"), feeds)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, atol=1e-4 * scale, rtol=0)
    assert weights_by_use(gp.load(again)) == weights_by_use(pruned)
    original = sum(p.numel() for p in module.parameters())
    assert sum(p.numel() for p in pruned_module.parameters()) < original


def prune(module, args, exporter, **plan):
    model = export(module, args, exporter)
    result = gp.prune_model(
        gp.PruneOptions(model=model, plan=gp.PlanOptions(**{"ratio": 0.5, **plan}))
    )
    assert result.plan.choices
    return model, result


class SmallNet(nn.Module):
    """Conv-BN, a depthwise separable residual block, a plain conv, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.fc = nn.Linear(24, 5)
        generator = torch.Generator().manual_seed(3)
        for bn in (self.bn1, self.bn2, self.bn3):
            for tensor, low, high in (
                (bn.weight, 0.5, 1.5), (bn.bias, -0.5, 0.5),
                (bn.running_mean, -1, 1), (bn.running_var, 0.5, 2),
            ):  # fmt: skip
                tensor.data = low + (high - low) * torch.rand(16, generator=generator)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + self.bn3(self.pw(torch.relu(self.bn2(self.dw(y)))))
        y = torch.relu(self.grouped(y))
        return self.fc(y.mean((2, 3)))


def small_net() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return SmallNet().eval(), (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


@pytest.mark.parametrize("exporter", ["dynamo", "classic"])
def test_cnn_with_batchnorm_residual_depthwise_and_grouped_convs(exporter):
    module, args = small_net()
    before = copy.deepcopy(module.state_dict())
    model, result = prune(module, args, exporter)
    pruned = apply_plan(module, {"plan": result.report["plan"]}, args, model=model)
    assert_matches(module, pruned, args, exporter, result.model)
    # the input module is untouched; the pruned one's attributes follow its weights
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert pruned.conv1.out_channels == pruned.bn1.num_features == pruned.dw.groups < 16
    assert pruned.dw.in_channels == pruned.dw.out_channels == pruned.pw.in_channels
    assert pruned.grouped.groups == 4 and pruned.grouped.out_channels == pruned.fc.in_features
    assert pruned.bn1.running_mean.shape == (pruned.conv1.out_channels,)


def test_report_file_and_pruned_model_carry_the_plan(tmp_path):
    module, args = small_net()
    model_path = tmp_path / "net.onnx"
    onnx.save(export(module, args, "dynamo"), str(model_path))
    result = gp.prune_model(gp.PruneOptions(model=str(model_path), plan=gp.PlanOptions(ratio=0.5)))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(result.report))
    gp.save(result.model, tmp_path / "pruned.onnx")
    from_report = apply_plan(module, report, args)  # the report names the model file
    assert_matches(module, from_report, args, "dynamo", result.model)
    # the pruned model's metadata holds the same plan (apply_plan(module, "pruned.onnx", ...))
    assert plan_record(tmp_path / "pruned.onnx")[0] == json.loads(json.dumps(result.report["plan"]))


def test_bad_reports_are_one_line_errors(tmp_path):
    module, args = small_net()
    model = export(module, args, "dynamo")
    with pytest.raises(gp.GraphpruneError, match="names no model"):
        apply_plan(module, {"groups": [], "options": {}}, args)
    with pytest.raises(gp.GraphpruneError, match="does not exist in this model"):
        bogus = {"groups": [{"name": "x", "sources": ["x"], "channels": 2, "removed": [0]}]}
        apply_plan(module, bogus, args, model=model)
    with pytest.raises(gp.GraphpruneError, match="holds no graphprune plan"):
        apply_plan(module, model, args, model=model)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(gp.GraphpruneError, match="cannot read the report"):
        apply_plan(module, tmp_path / "bad.json", args, model=model)


def test_bert_heads_and_mlp():
    module = TRANSFORMERS["bert"].build()
    args = (example_input("bert"),)
    model, result = prune(module, args, "dynamo")
    pruned = apply_plan(module, {"plan": result.report["plan"]}, args, model=model)
    assert_matches(module, pruned, args, "dynamo", result.model)
    attention = pruned.model.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.all_head_size == 32
    assert attention.attention_head_size == 16 and attention.scaling == 16**-0.5
    assert pruned.model.config.num_attention_heads == 2
    assert pruned.model.config.intermediate_size == 64


def test_llama_grouped_query_attention_with_uneven_layers():
    """Layer 0 keeps its heads, layer 1 loses half: per-module counts differ, so the
    shared config keeps its values; repeat_kv reads each module's own group count."""
    module = TRANSFORMERS["llama"].build()
    args = (example_input("llama"),)
    model, result = prune(module, args, "dynamo")
    plan = copy.deepcopy(result.report["plan"])
    analysis = result.analysis
    heads = [g for g in plan["groups"] if analysis.groups[_group_id(analysis, g)].kind == "heads"]
    assert len(heads) == 2
    heads[0]["removed"] = []
    again = gp.prune_model(gp.PruneOptions(model=model, plan_record=plan))
    pruned = apply_plan(module, plan, args, model=model)
    assert_matches(module, pruned, args, "dynamo", again.model)
    first, second = (layer.self_attn for layer in pruned.model.layers)
    assert first.q_proj.out_features == 64 and second.q_proj.out_features == 32  # 8 x 8 -> 4 x 8
    assert second.num_key_value_groups * second.k_proj.out_features == 32
    assert pruned.model.config.num_attention_heads == 8  # not uniform: left as it was
    assert pruned.model.config.intermediate_size == 64  # the MLPs are


def _group_id(analysis, row: dict) -> int:
    return next(g.id for g in analysis.groups if g.name == row["name"])


def test_kept_indices_describe_the_rewrite():
    """kept_indices (initializer -> axis -> kept positions) slices each original weight
    into exactly the rewrite's pruned weight."""
    module, args = small_net()
    model = gp.load(export(module, args, "dynamo"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, 0.5)
    keep_atom = plan.keep_atom(analysis)
    pruned = gp.prune(analysis, plan)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    nodes = {n.name: n for n in pruned.graph.node}
    kept = kept_indices(analysis, keep_atom)
    checked = 0
    for use in constant_uses(analysis):
        value = analysis.view.constant(use.storage)
        expected = weights[nodes[use.node].input[use.input_index]]
        np.testing.assert_array_equal(use.apply(value, keep_atom), expected)
        if not any(e.__class__.__name__ == "SliceGroupedInput" for e in use.edits):
            axes = kept[use.storage]
            index = tuple(axes.get(a, np.arange(n)) for a, n in enumerate(value.shape))
            np.testing.assert_array_equal(value[np.ix_(*index)], expected)
            checked += 1
    assert checked > 5


def test_timm_vit_heads_classic_export():
    """timm's Attention reads num_heads and attn_dim; the classic export renames the
    pre-transposed Linear weights, found by value."""
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    import timm

    torch.manual_seed(0)
    module = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        num_classes=10,
    ).eval()  # fmt: skip
    args = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
    model, result = prune(module, args, "classic")
    pruned = apply_plan(module, {"plan": result.report["plan"]}, args, model=model)
    assert_matches(module, pruned, args, "classic", result.model)
    attention = pruned.blocks[0].attn
    assert (attention.num_heads, attention.head_dim, attention.attn_dim) == (2, 64, 128)
    assert attention.scale == module.blocks[0].attn.scale == 64**-0.5
