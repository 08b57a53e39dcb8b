"""Registry of the reference model zoo: ``ZOO``, ``build``, ``example_input``, ``randomize_norms``.

The architectures are small, structurally faithful PyTorch definitions, one family per module
(``blocks``, ``resnets``, ``mobile``, ``classic``, ``dense_prediction``, ``convnext``).
The models are deliberately narrow so that exporting them and running them in onnxruntime
is fast, but each keeps the graph patterns that make pruning hard in its real counterpart
(residual adds, grouped and depthwise convs, squeeze-excitation, concats, channel splits and
shuffles, slices, flatten into Linear, channels-last LayerNorm, ...). No torchvision.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .classic import densenet, inception, vgg
from .convnext import convnext
from .dense_prediction import unet, yolov8
from .mobile import efficientnet, ghostnet, mobilenetv2, mobilenetv3, shufflenetv2
from .resnets import regnet, resnet18, resnet_bottleneck, resnet_tiny, resnext

# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model and the (static) input shape it is exported with."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...] = (1, 3, 64, 64)


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(resnet18),
    "resnet_tiny": ZooEntry(resnet_tiny, (1, 3, 32, 32)),
    "resnet_bottleneck": ZooEntry(resnet_bottleneck),
    "resnext": ZooEntry(resnext),
    "mobilenetv2": ZooEntry(mobilenetv2),
    "mobilenetv3": ZooEntry(mobilenetv3),
    "efficientnet": ZooEntry(efficientnet),
    "regnet": ZooEntry(regnet),
    "densenet": ZooEntry(densenet),
    "inception": ZooEntry(inception),
    "shufflenetv2": ZooEntry(shufflenetv2),
    "ghostnet": ZooEntry(ghostnet),
    "yolov8": ZooEntry(yolov8),
    "unet": ZooEntry(unet),
    "convnext": ZooEntry(convnext),
    "vgg": ZooEntry(vgg),
}


def stable_seed(name: str) -> int:
    """A seed that is the same in every process (unlike ``hash``, which is salted)."""
    return zlib.crc32(name.encode("utf-8"))


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int) -> None:
    """Give every norm layer and layer-scale parameter distinct, non-trivial values.

    Freshly initialised norms are all identical (mean 0, var 1, weight 1, bias 0): the classic
    exporter then deduplicates them or turns them into Identity, and a pruner could not tell
    a kept channel from a dropped one. Layer scale starts at 1e-6, which would hide whole
    residual branches from the numerical comparisons.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor: Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    def normal(tensor: Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            normal(module.running_mean, 0.1)
            uniform(module.running_var, 0.5, 1.5)
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            if module.weight is not None:
                uniform(module.weight, 0.5, 1.5)
            if module.bias is not None:
                normal(module.bias, 0.1)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("layer_scale", "gamma"):
            uniform(param, 0.5, 1.5)


def build(name: str) -> nn.Module:
    """Build zoo model ``name`` in eval mode with deterministic weights and norm statistics."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
    seed = stable_seed(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.build()
    randomize_norms(model, seed + 1)
    return model.eval()


def example_input(name: str) -> Tensor:
    """The deterministic input used for export and for comparing torch with onnxruntime."""
    generator = torch.Generator().manual_seed(stable_seed(name) + 2)
    return torch.randn(ZOO[name].input_shape, generator=generator)
