"""Mixture-of-experts test models: transformers' sparse MoE blocks and small MoE language
models built from configs (random weights), and onnxruntime's fused com.microsoft.MoE and
QMoE.

transformers 5 runs experts either in a Python loop over the experts a batch hits
("eager": the dynamo exporter refuses its data-dependent loop, the classic one bakes the
experts of the example input into the graph, a model that fails on other inputs) or in
the export-friendly batched form ("batched_mm": TopK indices gather each token's expert
weights from [E, ...] tables, then batched MatMuls), which both exporters export and
which is what is built here. The classic exporter cannot export the whole language
models (no symbolic for aten::diff in the mask code), so those are dynamo only.

    python -m models.moe_zoo --out DIR
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models.export import OPSET, cached_build, normalize
from models.torchvision_cpu import import_torchvision

import_torchvision()  # transformers imports torchvision whenever it is installed

HIDDEN, EXPERTS, TOP_K, INTER, VOCAB = 32, 8, 2, 16, 100


@dataclass(frozen=True)
class MoeEntry:
    family: str  # transformers' model family: Qwen2Moe, Qwen3Moe, Mixtral
    block: bool  # the sparse MoE block alone ([B, S, H] -> [B, S, H]) or the whole model
    exporters: tuple[str, ...] = ("dynamo", "classic")

    @property
    def module(self) -> str:
        return {"Qwen2Moe": "qwen2_moe", "Qwen3Moe": "qwen3_moe", "Mixtral": "mixtral"}[self.family]


MOE: dict[str, MoeEntry] = {
    "qwen2_moe_block": MoeEntry("Qwen2Moe", block=True),
    "qwen3_moe_block": MoeEntry("Qwen3Moe", block=True),
    "mixtral_block": MoeEntry("Mixtral", block=True),
    "qwen2_moe": MoeEntry("Qwen2Moe", block=False, exporters=("dynamo",)),
    "qwen3_moe": MoeEntry("Qwen3Moe", block=False, exporters=("dynamo",)),
    "mixtral": MoeEntry("Mixtral", block=False, exporters=("dynamo",)),
}


def config(family: str, layers: int = 2):
    import transformers

    sizes = {"num_local_experts": EXPERTS, "intermediate_size": INTER}
    if family != "Mixtral":
        sizes = {"num_experts": EXPERTS, "moe_intermediate_size": INTER}
    if family == "Qwen2Moe":
        sizes["shared_expert_intermediate_size"] = 24
    result = getattr(transformers, f"{family}Config")(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, num_experts_per_tok=TOP_K, max_position_embeddings=64,
        use_cache=False, attn_implementation="eager", **sizes,
    )  # fmt: skip
    result._experts_implementation = "batched_mm"
    return result


class _Block(nn.Module):
    """The sparse MoE block; Mixtral's returns (hidden, router logits): the hidden state."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y[0] if isinstance(y, tuple) else y


class _LastHidden(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).last_hidden_state


def build(name: str) -> nn.Module:
    """Seeded random weights (the router's too: zeros would tie every expert)."""
    entry = MOE[name]
    torch.manual_seed(0)
    if entry.block:
        modeling = importlib.import_module(
            f"transformers.models.{entry.module}.modeling_{entry.module}"
        )
        names = {"Qwen2Moe": "Qwen2MoeSparseMoeBlock", "Qwen3Moe": "Qwen3MoeSparseMoeBlock"}
        block = getattr(modeling, names.get(entry.family, "MixtralSparseMoeBlock"))(
            config(entry.family)
        )
        model: nn.Module = _Block(block)
    else:
        import transformers

        model = _LastHidden(getattr(transformers, f"{entry.family}Model")(config(entry.family)))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pname, parameter in model.named_parameters():
            if "norm" in pname:
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def example_input(name: str, shape: tuple[int, int] = (1, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    if MOE[name].block:
        return torch.randn(*shape, HIDDEN, generator=generator)
    return torch.randint(0, VOCAB, shape, generator=generator)


def to_proto(name: str, exporter: str) -> onnx.ModelProto:
    if exporter not in MOE[name].exporters:
        raise ValueError(f"{name} cannot be exported with the {exporter} exporter")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model, args = build(name), (example_input(name),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=OPSET, external_data=False,
                input_names=["input"], output_names=["output"], dynamic_shapes=(dims,),
            )  # fmt: skip
            return normalize(program.model_proto)
        buffer = io.BytesIO()
        torch.onnx.export(
            model, args, buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch", 1: "sequence"}},
        )  # fmt: skip
        return normalize(onnx.load_from_string(buffer.getvalue()))


def cached(name: str, exporter: str) -> Path:
    """Path of the cached export, exporting it if missing (atomically)."""
    return cached_build(f"moe-{name}.{exporter}", lambda: to_proto(name, exporter))


def ort_moe(
    *, activation: str = "silu", fusion: int = 0, biases: bool = True, k: int = TOP_K,
    normalize_routing: int = 1, projected: bool = False, seed: int = 0,
) -> onnx.ModelProto:  # fmt: skip
    """x [T, H] -> router Gemm -> com.microsoft.MoE (per onnxruntime's ContribOperators.md:
    fc1 [E, fusion * inter, H], fc2 [E, H, inter], biases [E, ...]) -> Add x, with a
    dynamic token count. `fusion` 1 is SwiGLU with gate and linear rows interleaved.
    `projected`: x is first a MatMul's output, whose columns reach the MoE directly."""
    rng = np.random.default_rng(seed)
    rows = (2 if fusion else 1) * INTER

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    initializers = [
        weight("router", EXPERTS, HIDDEN),
        weight("fc1", EXPERTS, rows, HIDDEN),
        weight("fc2", EXPERTS, HIDDEN, INTER),
    ]
    inputs = ["x", "router_probs", "fc1", "", "fc2", ""]
    if biases:
        initializers += [weight("fc1_bias", EXPERTS, rows), weight("fc2_bias", EXPERTS, HIDDEN)]
        inputs[3], inputs[5] = "fc1_bias", "fc2_bias"
    attributes = {
        "k": k,
        "activation_type": activation,
        "normalize_routing_weights": normalize_routing,
    }
    if fusion:
        attributes["swiglu_fusion"] = fusion
    h = "x"
    nodes = []
    if projected:
        h = "h"
        initializers.append(weight("projection", HIDDEN, HIDDEN))
        nodes.append(helper.make_node("MatMul", ["x", "projection"], [h], name="project"))
    nodes += [
        helper.make_node("Gemm", [h, "router"], ["router_probs"], name="router", transB=1),
        helper.make_node(
            "MoE", [h, *inputs[1:]], ["moe"], name="moe", domain="com.microsoft", **attributes
        ),
        helper.make_node("Add", ["moe", h], ["y"], name="residual"),
    ]
    return _token_model("moe", nodes, initializers, TensorProto.FLOAT)


def ort_qmoe(*, k: int = TOP_K, seed: int = 0) -> onnx.ModelProto:
    """x [T, H] (float16, as onnxruntime's CPU QMoE takes) -> router Gemm ->
    com.microsoft.QMoE with 8-bit expert weights [E, N, K] and per-row scales [E, N]."""
    rng = np.random.default_rng(seed)

    def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    initializers = [
        tensor("router", rng.normal(0, 0.3, (EXPERTS, HIDDEN)).astype(np.float16)),
        tensor("fc1", rng.integers(0, 256, (EXPERTS, INTER, HIDDEN)).astype(np.uint8)),
        tensor("fc1_scales", (0.01 * rng.random((EXPERTS, INTER))).astype(np.float16)),
        tensor("fc2", rng.integers(0, 256, (EXPERTS, HIDDEN, INTER)).astype(np.uint8)),
        tensor("fc2_scales", (0.01 * rng.random((EXPERTS, HIDDEN))).astype(np.float16)),
    ]
    inputs = ["x", "router_probs", "fc1", "fc1_scales", "", "fc2", "fc2_scales"]
    attributes = {"k": k, "activation_type": "silu", "expert_weight_bits": 8}
    nodes = [
        helper.make_node("Gemm", ["x", "router"], ["router_probs"], name="router", transB=1),
        helper.make_node(
            "QMoE",
            inputs,
            ["y"],
            name="qmoe",
            domain="com.microsoft",
            normalize_routing_weights=1,
            **attributes,
        ),
    ]
    return _token_model("qmoe", nodes, initializers, TensorProto.FLOAT16)


def _token_model(name: str, nodes, initializers, dtype: int) -> onnx.ModelProto:
    """x [tokens, HIDDEN] -> nodes -> y of the same shape and type, with the contrib opset."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", dtype, ["tokens", HIDDEN])],
        [helper.make_tensor_value_info("y", dtype, ["tokens", HIDDEN])],
        initializers,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def exports() -> list[tuple[str, str, Callable[[], onnx.ModelProto]]]:
    """(name, exporter, loader) of every MoE test model, the onnxruntime op as "ort-op"."""
    found: list[tuple[str, str, Callable[[], onnx.ModelProto]]] = [
        (name, exporter, lambda n=name, e=exporter: onnx.load(str(cached(n, e))))
        for name, entry in MOE.items()
        for exporter in entry.exporters
    ]
    return [*found, ("ort_moe", "ort-op", ort_moe), ("ort_qmoe", "ort-op", ort_qmoe)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="default: all")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(MOE):
        for exporter in MOE[name].exporters:
            path = args.out / f"{name}.{exporter}.onnx"
            path.write_bytes(to_proto(name, exporter).SerializeToString(deterministic=True))
            print(path)
    for name, build_op in (("ort_moe", ort_moe), ("ort_qmoe", ort_qmoe)):
        path = args.out / f"{name}.onnx"
        path.write_bytes(build_op().SerializeToString(deterministic=True))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
