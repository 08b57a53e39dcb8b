"""Options of a recovery run, importable without torch (the command line and the pipeline
check them before anything trains)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GraphpruneError

LOSSES = ("mse", "kl", "cosine")
SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
TRAINABLE = ("weights", "all", "norm-bias")


@dataclass(frozen=True)
class FinetuneOptions:
    """How to train: `steps` (or `epochs`; one epoch when neither) of `batch` samples,
    AdamW at `lr` on a warmup-then-`schedule` curve; the loss on the outputs (`loss`,
    `temperature`), on corresponding intermediate tensors (`features`, `feature_weight`),
    and on labels (`label_weight`, when the data holds them); what trains (`trainable`);
    where checkpoints (`checkpoint_dir`, every `checkpoint_every` steps) and the teacher's
    values (`cache_dir`; else a private temporary folder, removed) go."""

    steps: int | None = None
    epochs: float | None = None
    batch: int = 32
    lr: float = 1e-4
    schedule: str = "cosine"
    warmup: float = 0.05
    weight_decay: float = 0.0
    loss: str = "mse"
    temperature: float = 1.0
    features: bool = True
    feature_weight: float = 1.0
    label_weight: float = 1.0
    trainable: str = "weights"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    resume: bool = False
    cache_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("loss", self.loss, LOSSES), ("schedule", self.schedule,
                                     SCHEDULES), ("device", self.device, DEVICES),
                                     ("train", self.trainable, TRAINABLE)):  # fmt: skip
            if value not in choices:
                raise GraphpruneError(
                    f"unknown --{name} {value!r} (choose from {', '.join(choices)})"
                )
        if self.steps is not None and self.epochs is not None:
            raise GraphpruneError("give --steps or --epochs, not both")
        checks = (("--steps", self.steps, 1), ("--epochs", self.epochs, 1e-9),
                  ("--batch", self.batch, 1), ("--lr", self.lr, 1e-12),
                  ("--threads", self.threads, 1), ("--checkpoint-every", self.checkpoint_every, 1),
                  ("--temperature", self.temperature, 1e-6), ("--seed", self.seed, 0))  # fmt: skip
        for name, value, low in checks:
            if value is not None and not (math.isfinite(value) and value >= low):
                raise GraphpruneError(f"{name} must be at least {low:g}, got {value}")
        for name, value in (("--warmup", self.warmup), ("--weight-decay", self.weight_decay),
                            ("--feature-weight", self.feature_weight),
                            ("--label-weight", self.label_weight)):  # fmt: skip
            if not (math.isfinite(value) and value >= 0) or (name == "--warmup" and value >= 1):
                upper = " and < 1" if name == "--warmup" else ""
                raise GraphpruneError(f"{name} must be a number >= 0{upper}, got {value}")
        if self.resume and not self.checkpoint_dir:
            raise GraphpruneError("--resume needs --checkpoint-dir")
