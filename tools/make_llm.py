"""Write a LLaMA/Qwen2-shaped ONNX model of any size, with seeded random weights streamed
into one external-data file tensor by tensor (never the whole model in memory; no torch).

The graph follows, op for op, what torch's dynamo exporter (torch 2.13) emits for
`transformers`' `LlamaForCausalLM` / `Qwen2ForCausalLM` with eager attention and no cache
(compare `tx-llama.dynamo.*.onnx` in the test cache): `Gather` embedding; the causal mask
built from `Range`/`CumSum`/`GatherND`/`Where`; rotary cos/sin from `inv_freq`; per layer a
decomposed RMSNorm (`Pow`, `ReduceMean`, `Add`, `Sqrt`, `Reciprocal`, `Mul`, `Mul` by the
weight), q/k/v `MatMul`s with pre-transposed weights (plus bias `Add`s for Qwen2), the
`Reshape` to [B, S, H, D] and `Transpose`, RoPE (`Slice`/`Neg`/`Concat`), grouped-query
`repeat_kv` (`Unsqueeze`, `Expand`, `Reshape`), scaled `MatMul`/`Softmax`/`MatMul`, o_proj,
residual `Add`s, a SwiGLU MLP (`x * Sigmoid(x)`), the final norm and lm_head. Batch and
sequence are dynamic: where the export with a static batch has a constant 1, this graph
reads the batch from `Shape(input)` through a `Concat`. With `--dtype float16` the casts
transformers adds appear too (RMSNorm and softmax in float32, cos/sin cast down).

    python tools/make_llm.py --params 1B --out /tmp/llm/1B            # llama.onnx + llama.onnx.data
    python tools/make_llm.py --params 7B --dtype float16 --out /tmp/llm/7B-fp16
    python tools/make_llm.py --hidden 64 --layers 2 --heads 8 --kv-heads 4 \
        --intermediate 128 --vocab 100 --out /tmp/llm/tiny
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Config:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    arch: str = "llama"  # or "qwen2": q/k/v biases

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def parameters(self) -> int:
        d, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * self.intermediate + 2 * d
        if self.arch == "qwen2":
            per_layer += d + 2 * kv
        return self.layers * per_layer + 2 * self.vocab * d + d


# Shapes of public models of each size (vocabulary 32000 as LLaMA 2 / TinyLlama).
PRESETS = {
    "tiny": Config(64, 2, 8, 4, 128, 100),
    "0.5B": Config(1536, 16, 12, 4, 4096, 32000),  # 0.50 B
    "1B": Config(2048, 22, 32, 4, 5632, 32000),  # TinyLlama-1.1B: 1.10 B
    "3B": Config(3072, 28, 24, 8, 8192, 32000),  # LLaMA 3.2 3B with a 32k vocabulary: 3.01 B
    "7B": Config(4096, 32, 32, 32, 11008, 32000),  # LLaMA 2 7B: 6.74 B
}

_ALIGN = 4096  # external data offsets on page boundaries (onnxruntime can map them)
_INLINE_BYTES = 1024  # smaller tensors stay in the .onnx file
_CHUNK_ELEMENTS = 1 << 24  # random values generated and written 16 M at a time
_INT64_MAX = 9223372036854775807


class _Writer:
    """Builds the graph; large initializers go straight to the external-data file."""

    def __init__(self, data_path: Path, dtype: np.dtype, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.dtype = dtype
        self.seed = seed
        self.data_path = data_path
        self.data = open(data_path, "wb")  # noqa: SIM115 (closed in finish)
        self.offset = 0
        self.tensors = 0
        self.counter = 0
        self.constants: dict[tuple, str] = {}

    def fresh(self, prefix: str = "val") -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def node(self, op: str, inputs: list[str], name: str | None = None, outputs=1, **attrs):
        name = name or self.fresh(f"node_{op}")
        outs = [self.fresh(name.removeprefix("node_")) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=np.int64) -> str:
        """A small inline initializer, shared by value as the exporter shares them."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            name = self.fresh("val")
            self.initializers.append(numpy_helper.from_array(array, name))
            self.constants[key] = name
        return self.constants[key]

    def weight(self, name: str, shape: tuple[int, ...], kind: str = "normal") -> str:
        """A seeded random weight: N(0, 0.02) ('normal') or 1 + N(0, 0.1) ('norm')."""
        self.tensors += 1
        rng = np.random.default_rng([self.seed, self.tensors])
        count = math.prod(shape)
        tensor = TensorProto(name=name, dims=shape,
                             data_type=helper.np_dtype_to_tensor_dtype(self.dtype))  # fmt: skip
        if count * self.dtype.itemsize <= _INLINE_BYTES:
            tensor.raw_data = _random(rng, count, kind).astype(self.dtype).tobytes()
            self.initializers.append(tensor)
            return name
        padding = -self.offset % _ALIGN
        self.data.write(b"\0" * padding)
        self.offset += padding
        start = self.offset
        for first in range(0, count, _CHUNK_ELEMENTS):
            part = _random(rng, min(_CHUNK_ELEMENTS, count - first), kind).astype(self.dtype)
            self.data.write(part.tobytes())
            self.offset += part.nbytes
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(start)),
                           ("length", str(self.offset - start))):  # fmt: skip
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        self.data.close()


def _random(rng: np.random.Generator, count: int, kind: str) -> np.ndarray:
    values = rng.standard_normal(count, dtype=np.float32)
    if kind == "norm":
        return 1.0 + 0.1 * values
    return 0.02 * values


def build(config: Config, out: Path, dtype: str = "float32", seed: int = 0,
          name: str = "llama", progress: bool = False) -> Path:  # fmt: skip
    """Write `out/<name>.onnx` and `out/<name>.onnx.data`; returns the model's path."""
    if config.hidden % config.heads or config.heads % config.kv_heads:
        raise SystemExit("hidden must divide by heads, heads by kv-heads")
    if config.head_dim % 2:
        raise SystemExit("the head dim must be even (rotary embeddings)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.onnx"
    w = _Writer(out / f"{name}.onnx.data", np.dtype(dtype), seed)
    half = dtype == "float16"
    float_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    try:
        started = time.perf_counter()
        hidden = _prefix(w, config, half)
        mask, cos, sin, shapes = hidden.pop("mask"), hidden.pop("cos"), hidden.pop("sin"), hidden
        x = hidden["embedding"]
        for layer in range(config.layers):
            x = _layer(w, config, layer, x, mask, cos, sin, shapes, half)
            if progress:
                gigabytes = w.offset / 1e9
                elapsed = time.perf_counter() - started
                print(f"layer {layer + 1}/{config.layers}: {gigabytes:.2f} GB, {elapsed:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
        normed = _rms_norm(w, x, w.weight("model.norm.weight", (config.hidden,), "norm"), half)
        lm_head = w.weight("lm_head.weight.T", (config.hidden, config.vocab))
        w.node("MatMul", [normed, lm_head], name="node_linear_lm_head")
        w.nodes[-1].output[0] = "logits"
    finally:
        w.close()
    graph = helper.make_graph(
        w.nodes, "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", float_type,
                                       ["batch", "sequence", config.vocab])],
        w.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    model.producer_name, model.producer_version = "pytorch", "2.13.0+cpu"
    model.metadata_props.add(key="make_llm", value=_describe(config, dtype, seed))
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(model.SerializeToString(deterministic=True))
    os.replace(temp, path)
    return path


def _describe(config: Config, dtype: str, seed: int) -> str:
    c = config
    return (f"arch={c.arch} hidden={c.hidden} layers={c.layers} heads={c.heads} "
            f"kv_heads={c.kv_heads} intermediate={c.intermediate} vocab={c.vocab} "
            f"dtype={dtype} seed={seed} params={c.parameters()}")  # fmt: skip


def _prefix(w: _Writer, c: Config, half: bool) -> dict[str, str]:
    """Embedding, the causal mask and rotary cos/sin, and the shape vectors the layers
    share (the batch read from the input where a static-batch export has 1)."""
    ids = "input_ids"
    batch = w.node("Shape", [ids], name="node_Shape_0", start=0, end=1)
    seq = w.node("Shape", [ids], name="node_Shape_1", start=1, end=2)
    batch_int = w.node("Squeeze", [batch], name="node_sym_size_int_16")
    seq_int = w.node("Squeeze", [seq], name="node_sym_size_int_17")
    embed = w.weight("model.embed_tokens.weight", (c.vocab, c.hidden))
    embedding = w.node("Gather", [embed, ids], name="node_embedding", axis=0)
    zero, one = w.const(0), w.const(1)
    arange = w.node("Range", [zero, seq_int, one], name="node_arange")
    positions = w.node("Unsqueeze", [arange, w.const([0])], name="node_unsqueeze")
    # The causal mask as the exporter writes it (transformers' sdpa-free mask function).
    first = w.node("Slice", [positions, w.const([0]), w.const([1]), w.const([1]), w.const([1])])
    cat = w.node("Concat", [w.node("Sub", [first, one]), positions], axis=-1)
    end = w.node("Reshape", [w.node("Add", [one, seq_int]), w.const([-1])], allowzero=0)
    before = w.node("Slice", [cat, w.const([0]), seq, w.const([-1]), w.const([1])])
    after = w.node("Slice", [cat, w.const([1]), end, w.const([-1]), w.const([1])])
    changed = w.node("Not", [w.node("Equal", [w.node("Sub", [after, before]), one])])
    cumsum = w.node("CumSum", [w.node("Cast", [changed], to=TensorProto.INT64), w.const(-1)])
    batch_rows = w.node("Concat", [batch, w.const([1])], axis=0)
    expanded = w.node("Expand", [positions, batch_rows])
    # The exporter specialised to batch 1 gathers from [1, S]; a dynamic batch needs [B, S].
    cumsum = w.node("Expand", [cumsum, batch_rows])
    rows = w.node("Unsqueeze", [w.node("Unsqueeze", [w.node("Range", [zero, batch_int, one]),
                                                     w.const([1, 2])]), w.const([3])])  # fmt: skip
    cols = w.node("Unsqueeze", [arange, w.const([0, 1])])
    queries = w.node("Unsqueeze", [cols, w.const([3])])
    keys = w.node("Unsqueeze", [cols, w.const([2])])

    def gather_index(other: str) -> str:
        target = w.node("Shape", [w.node("Max", [rows, other])], start=0)
        parts = [w.node("Unsqueeze", [w.node("Expand", [t, target]), w.const([-1])])
                 for t in (rows, other)]  # fmt: skip
        return w.node("Concat", parts, axis=-1)

    index_q, index_k = gather_index(queries), gather_index(keys)
    same = w.node("Equal", [w.node("GatherND", [cumsum, index_q], batch_dims=0),
                            w.node("GatherND", [cumsum, index_k], batch_dims=0)])  # fmt: skip
    same = w.node("And", [w.const(True, np.bool_), same])
    key_positions = w.node("GatherND", [expanded, index_k], batch_dims=0)
    query_positions = w.node("GatherND", [expanded, index_q], batch_dims=0)
    causal = w.node("LessOrEqual", [key_positions, query_positions])
    allowed = w.node("And", [same, causal])
    mask_shape = w.node("Concat", [batch, w.const([1]), seq, seq], axis=0)
    mask_dtype = np.float16 if half else np.float32
    lowest = float(np.finfo(mask_dtype).min)
    mask = w.node("Where", [w.node("Expand", [allowed, mask_shape]), w.const(0.0, mask_dtype),
                            w.const(lowest, mask_dtype)], name="node_where")  # fmt: skip
    # Rotary embeddings: positions x inv_freq, cos and sin (cast to the model's dtype).
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim))
    w.initializers.append(numpy_helper.from_array(inv_freq, "model.rotary_emb.inv_freq"))
    pos = w.node("Cast", [w.node("Unsqueeze", [positions, w.const([2])])], to=TensorProto.FLOAT)
    freqs = w.node("Mul", [pos, "model.rotary_emb.inv_freq"])
    emb = w.node("Concat", [freqs, freqs], axis=-1)
    cos, sin = w.node("Cos", [emb], name="node_cos"), w.node("Sin", [emb], name="node_sin")
    if half:
        cos = w.node("Cast", [cos], to=TensorProto.FLOAT16)
        sin = w.node("Cast", [sin], to=TensorProto.FLOAT16)
    cos = w.node("Unsqueeze", [cos, w.const([1])])
    sin = w.node("Unsqueeze", [sin, w.const([1])])
    d, kv, rep = c.head_dim, c.kv_heads, c.heads // c.kv_heads
    minus = w.const([-1])
    return {
        "embedding": embedding, "mask": mask, "cos": cos, "sin": sin,
        "q": w.node("Concat", [batch, minus, w.const([c.heads]), w.const([d])], axis=0),
        "kv": w.node("Concat", [batch, minus, w.const([kv]), w.const([d])], axis=0),
        "repeat": w.node("Concat", [batch, w.const([kv]), w.const([rep]), seq, w.const([d])],
                         axis=0),
        "repeated": w.node("Concat", [batch, w.const([c.heads]), minus, w.const([d])], axis=0),
        "merged": w.node("Concat", [batch, minus, w.const([c.hidden])], axis=0),
    }  # fmt: skip


def _rms_norm(w: _Writer, x: str, weight: str, half: bool) -> str:
    if half:
        x = w.node("Cast", [x], to=TensorProto.FLOAT)
    mean = w.node("ReduceMean", [w.node("Pow", [x, w.const(2.0, np.float32)]), w.const([-1])],
                  keepdims=1, noop_with_empty_axes=0)  # fmt: skip
    eps = w.node("Add", [mean, w.const(1e-6, np.float32)])
    scaled = w.node("Mul", [x, w.node("Reciprocal", [w.node("Sqrt", [eps])])])
    if half:
        scaled = w.node("Cast", [scaled], to=TensorProto.FLOAT16)
    return w.node("Mul", [weight, scaled])


def _linear(w: _Writer, x: str, weight: str, bias: str | None = None) -> str:
    y = w.node("MatMul", [x, weight], name=w.fresh("node_linear"))
    return y if bias is None else w.node("Add", [y, bias])


def _rope(w: _Writer, x: str, cos: str, sin: str, d: int) -> str:
    axis, step = w.const([3]), w.const([1])
    first = w.node("Slice", [x, w.const([0]), w.const([d // 2]), axis, step])
    second = w.node("Slice", [x, w.const([d // 2]), w.const([_INT64_MAX]), axis, step])
    rotated = w.node("Concat", [w.node("Neg", [second]), first], axis=-1)
    return w.node("Add", [w.node("Mul", [x, cos]), w.node("Mul", [rotated, sin])])


def _layer(w: _Writer, c: Config, i: int, x: str, mask: str, cos: str, sin: str,
           shapes: dict[str, str], half: bool) -> str:  # fmt: skip
    p = f"model.layers.{i}"
    d, kv_width = c.head_dim, c.kv_heads * c.head_dim
    normed = _rms_norm(w, x, w.weight(f"{p}.input_layernorm.weight", (c.hidden,), "norm"), half)
    projections = {}
    for proj, width in (("q", c.hidden), ("k", kv_width), ("v", kv_width)):
        weight = w.weight(f"{p}.self_attn.{proj}_proj.weight.T", (c.hidden, width))
        bias = None
        if c.arch == "qwen2":
            bias = w.weight(f"{p}.self_attn.{proj}_proj.bias", (width,))
        y = _linear(w, normed, weight, bias)
        view = w.node("Reshape", [y, shapes["q" if proj == "q" else "kv"]], allowzero=1)
        projections[proj] = w.node("Transpose", [view], perm=[0, 2, 1, 3])
    q = _rope(w, projections["q"], cos, sin, d)
    k = _rope(w, projections["k"], cos, sin, d)

    def repeat_kv(t: str) -> str:
        expanded = w.node("Expand", [w.node("Unsqueeze", [t, w.const([2])]), shapes["repeat"]])
        return w.node("Reshape", [expanded, shapes["repeated"]], allowzero=1)

    k, v = repeat_kv(k), repeat_kv(projections["v"])
    dtype = np.float16 if half else np.float32
    scores = w.node("MatMul", [q, w.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = w.node("Add", [w.node("Mul", [scores, w.const(d**-0.5, dtype)]), mask])
    if half:
        scores = w.node("Cast", [scores], to=TensorProto.FLOAT)
    probs = w.node("Softmax", [scores], axis=-1)
    if half:
        probs = w.node("Cast", [probs], to=TensorProto.FLOAT16)
    context = w.node("Transpose", [w.node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = w.node("Reshape", [context, shapes["merged"]], allowzero=1)
    o = _linear(w, merged, w.weight(f"{p}.self_attn.o_proj.weight.T", (c.hidden, c.hidden)))
    x = w.node("Add", [x, o])
    normed = _rms_norm(
        w, x, w.weight(f"{p}.post_attention_layernorm.weight", (c.hidden,), "norm"), half
    )
    gate = _linear(w, normed, w.weight(f"{p}.mlp.gate_proj.weight.T", (c.hidden, c.intermediate)))
    silu = w.node("Mul", [gate, w.node("Sigmoid", [gate])])
    up = _linear(w, normed, w.weight(f"{p}.mlp.up_proj.weight.T", (c.hidden, c.intermediate)))
    down = w.weight(f"{p}.mlp.down_proj.weight.T", (c.intermediate, c.hidden))
    return w.node("Add", [x, _linear(w, w.node("Mul", [silu, up]), down)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", choices=sorted(PRESETS), help="a preset size")
    for flag in ("hidden", "layers", "heads", "kv-heads", "intermediate", "vocab"):
        parser.add_argument(f"--{flag}", type=int, help="overrides the preset")
    parser.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="llama", help="file name stem (default llama)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    base = PRESETS[args.params or "tiny"]
    fields = {f: getattr(args, f.replace("-", "_")) for f in
              ("hidden", "layers", "heads", "kv-heads", "intermediate", "vocab")}  # fmt: skip
    if args.params is None and None in fields.values():
        parser.error("give --params or all of --hidden --layers --heads --kv-heads "
                     "--intermediate --vocab")  # fmt: skip
    config = Config(
        *(fields[f] if fields[f] is not None else getattr(base, f.replace("-", "_"))
          for f in ("hidden", "layers", "heads", "kv-heads", "intermediate", "vocab")),
        arch=args.arch,
    )  # fmt: skip
    started = time.perf_counter()
    path = build(config, Path(args.out), args.dtype, args.seed, args.name, progress=True)
    data = path.with_name(path.name + ".data")
    print(f"{path}: {config.parameters() / 1e9:.3f} B parameters, "
          f"{data.stat().st_size / 1e9:.2f} GB external data ({args.dtype}), "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
