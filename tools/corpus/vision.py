"""Vision entries: every torchvision classification and segmentation builder, the detection
backbones (backbone + FPN as a module, not the detector with its NMS), and the smallest
model of many timm families, all with random weights (`weights=None`, `pretrained=False`).

Inputs are as small as the architecture allows: the first of `SIZES` at which a forward
pass works (ViT-like models are built for that size through their image-size argument).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .registry import BASE, EXTRA, Built, Entry, ExportFailed

SIZES = (64, 96, 128, 224, 256, 320)
USUAL_SIZE = 224
MAX_PARAMS = 150_000_000  # above this, exports and rewrites take minutes on the corpus box

# The smallest model of each torchvision family (its builder's module): it gets EXTRA.
TORCHVISION_REPRESENTATIVES = frozenset({
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
    "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "resnet18", "shufflenet_v2_x0_5", "squeezenet1_0", "swin_t", "vgg11", "vit_b_16",
})  # fmt: skip
# Detection models whose backbone another entry already has (the same ResNet-50 FPN).
DUPLICATE_BACKBONES = frozenset(
    {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn"}
)

# timm family -> its smallest model; the families marked * get EXTRA.
TIMM = {
    "vit": "vit_tiny_patch16_224*", "deit": "deit_tiny_patch16_224", "deit3":
    "deit3_small_patch16_224", "swin": "swin_tiny_patch4_window7_224*", "swinv2_cr":
    "swinv2_cr_tiny_ns_224", "maxvit": "maxvit_pico_rw_256", "coatnet": "coatnet_pico_rw_224",
    "convnext": "convnext_atto*", "convnextv2": "convnextv2_atto", "efficientnet":
    "efficientnet_b0*", "efficientnet_lite": "efficientnet_lite0", "efficientnetv2":
    "tf_efficientnetv2_b0", "mobilenetv3": "mobilenetv3_small_050*", "mobilenetv4":
    "mobilenetv4_conv_small*", "regnetx": "regnetx_002", "regnety": "regnety_002*", "repvgg":
    "repvgg_a0", "ghostnet": "ghostnet_050", "ghostnetv2": "ghostnetv2_100", "cspdarknet":
    "cspdarknet53", "cs3darknet": "cs3darknet_s", "cspresnet": "cspresnet50", "mobilevit":
    "mobilevit_xxs*", "mobilevitv2": "mobilevitv2_050", "poolformer": "poolformer_s12",
    "poolformerv2": "poolformerv2_s12", "efficientformer": "efficientformer_l1",
    "efficientformerv2": "efficientformerv2_s0", "levit": "levit_128s*", "nf_resnet":
    "nf_resnet26", "nfnet": "nfnet_l0", "resnest": "resnest14d", "hrnet": "hrnet_w18_small*",
    "dla": "dla46_c", "resnet": "resnet10t", "res2net": "res2net50_14w_8s", "densenet":
    "densenet121", "dpn": "dpn48b", "mixnet": "mixnet_s", "mnasnet": "mnasnet_small",
    "fbnet": "fbnetc_100", "hardcorenas": "hardcorenas_a", "lcnet": "lcnet_050", "tinynet":
    "tinynet_e", "rexnet": "rexnet_100", "selecsls": "selecsls42b", "sknet": "skresnet18",
    "senet": "legacy_seresnet18", "cait": "cait_xxs24_224", "xcit": "xcit_nano_12_p16_224",
    "pit": "pit_ti_224", "crossvit": "crossvit_tiny_240", "convit": "convit_tiny", "twins":
    "twins_svt_small", "pvt_v2": "pvt_v2_b0", "edgenext": "edgenext_xx_small", "fastvit":
    "fastvit_t8", "repvit": "repvit_m1", "vovnet": "ese_vovnet19b_dw", "hgnetv2": "hgnetv2_b0",
    "hgnet": "hgnet_tiny", "efficientvit_mit": "efficientvit_b0", "efficientvit_msra":
    "efficientvit_m0", "gcvit": "gcvit_xxtiny", "mvitv2": "mvitv2_tiny", "davit": "davit_tiny",
    "sequencer": "sequencer2d_s", "mlp_mixer": "mixer_s32_224", "resmlp": "resmlp_12_224",
    "gmlp": "gmlp_ti16_224", "eva02": "eva02_tiny_patch14_224", "volo": "volo_d1_224",
    "coat": "coat_lite_tiny", "visformer": "visformer_tiny", "botnet": "botnet26t_256",
    "halonet": "halonet26t", "lambda": "lambda_resnet26t", "gernet": "gernet_s", "starnet":
    "starnet_s1", "mambaout": "mambaout_femto", "rdnet": "rdnet_tiny", "tiny_vit":
    "tiny_vit_5m_224", "focalnet": "focalnet_tiny_srf", "inception_v3": "inception_v3",
    "xception": "xception41", "tresnet": "tresnet_m", "nextvit": "nextvit_small", "fasternet":
    "fasternet_t0", "shvit": "shvit_s1", "vgg": "vgg11", "mobileone": "mobileone_s0", "hiera":
    "hiera_tiny_224", "inception_next": "inception_next_atto",
}  # fmt: skip


def import_torchvision() -> Any:
    """torchvision, importable on a CPU-only torch (`models.torchvision_cpu`)."""
    from models.torchvision_cpu import import_torchvision as shimmed

    return shimmed()


def _first_working_size(
    make: Callable[..., Any], size_kwargs: list[Callable[[int], dict]], min_size: int
) -> tuple[Any, int]:
    """(module, size) for the smallest size from `min_size` at which the model builds and
    runs."""
    import torch

    errors = []
    for size in (s for s in SIZES if s >= min_size):
        for kwargs in [*(k(size) for k in size_kwargs), {}]:
            try:
                module = make(**kwargs).eval()
            except TypeError:  # the builder has no such size argument
                continue
            except Exception as error:  # it has, and refuses this size (MaxViT: 224 only)
                errors.append(f"{size}: {_first_line(error)}")
                break
            try:
                with torch.no_grad():
                    module(torch.zeros(1, 3, size, size))
            except Exception as error:  # a size the architecture refuses: try the next
                errors.append(f"{size}: {_first_line(error)}")
                break
            return module, size
    raise ExportFailed(f"no input size in {SIZES} works ({errors[-1] if errors else ''})")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:80] if lines else type(error).__name__


def _check_size(make: Callable[[], Any]) -> None:
    """Refuse models above MAX_PARAMS, counted on the meta device (no memory, no init)."""
    import torch

    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in make().parameters())
    except Exception:  # a builder that computes with tensors (RegNet's widths): no check
        return
    if params > MAX_PARAMS:
        raise ExportFailed(f"{params / 1e6:.0f}M parameters, above the corpus cap")


def _image_model(
    make: Callable[..., Any], size_kwargs: list[Callable[[int], dict]], min_size: int = 0
) -> Built:
    import torch

    torch.manual_seed(0)
    _check_size(make)
    module, size = _first_working_size(make, size_kwargs, min_size)
    # Batch 2: a dynamic batch exported from an example of 1 can come out specialised to 1.
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    # The classic exporter refuses adaptive pooling to sizes that do not divide the input
    # (AlexNet, VGG: 7x7): at the usual 224 they do.
    larger = partial(_image_model, make, size_kwargs, USUAL_SIZE) if size < USUAL_SIZE else None
    return Built(module, (image,), ("input",), {"input": {0: "batch"}}, larger=larger)


def _wrap(module: Any, pick: Callable[[Any], Any]) -> Any:
    """`module` with its (dict) output turned into tensors, which both exporters accept."""
    from torch import nn

    class Picked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x):
            return pick(self.inner(x))

    return Picked().eval()


def _classification(name: str) -> Built:
    tv = import_torchvision()
    builder = tv.models.get_model_builder(name)
    size_kwargs = [lambda s: {"image_size": s}, lambda s: {"input_size": (s, s)}]
    # Their builders warn unless init_weights is given (aux logits exist only in training).
    extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return _image_model(partial(builder, weights=None, **extra), size_kwargs)


def _segmentation(name: str) -> Built:
    tv = import_torchvision()
    builder = tv.models.get_model_builder(name)

    def make(**kwargs):
        model = builder(weights=None, weights_backbone=None, **kwargs)
        return _wrap(model, lambda out: out["out"])

    return _image_model(make, [])


def _detection_backbone(name: str) -> Built:
    tv = import_torchvision()
    builder = tv.models.get_model_builder(name)

    def make(**kwargs):
        detector = builder(weights=None, weights_backbone=None, **kwargs)
        return _wrap(detector.backbone, lambda features: tuple(features.values()))

    return _image_model(make, [])


def _timm(name: str) -> Built:
    import_torchvision()  # timm imports torchvision
    import timm

    make = partial(timm.create_model, name, pretrained=False)
    return _image_model(make, [lambda s: {"img_size": s}])


def torchvision_entries() -> list[Entry]:
    tv = import_torchvision()
    entries = []
    for name in tv.models.list_models(module=tv.models):
        family = tv.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        variants = BASE + EXTRA if name in TORCHVISION_REPRESENTATIVES else BASE
        entries.append(
            Entry(
                f"torchvision/{name}",
                "torchvision",
                family,
                variants,
                partial(_classification, name),
            )
        )
    for name in tv.models.list_models(module=tv.models.segmentation):
        variants = BASE + EXTRA if name == "lraspp_mobilenet_v3_large" else BASE
        entries.append(
            Entry(
                f"torchvision/{name}",
                "torchvision",
                "segmentation",
                variants,
                partial(_segmentation, name),
            )
        )
    for name in tv.models.list_models(module=tv.models.detection):
        if name in DUPLICATE_BACKBONES:
            continue
        entries.append(
            Entry(
                f"torchvision/{name}.backbone",
                "torchvision",
                "detection",
                BASE,
                partial(_detection_backbone, name),
            )
        )
    return entries


def timm_entries() -> list[Entry]:
    entries = []
    for family, model in TIMM.items():
        name = model.rstrip("*")
        variants = BASE + EXTRA if model.endswith("*") else BASE
        entries.append(Entry(f"timm/{name}", "timm", family, variants, partial(_timm, name)))
    return entries
