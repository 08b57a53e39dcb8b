"""The distillation objective and the learning-rate schedule.

Every term is scale-free, so outputs, features and labels of any magnitude weigh as their
weights say: `mse` is the mean squared error over the teacher's variance (1.0 = as far as
predicting the teacher's mean), `kl` the temperature-scaled KL divergence of softmaxes
over the last axis (classifier logits), `cosine` one minus the cosine along the last axis
(embeddings). Feature terms are normalized MSEs; labels add a cross-entropy on the first
output."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    error = ((student - teacher) ** 2).mean()
    scale = teacher.var(unbiased=False) if teacher.numel() > 1 else teacher.square().mean()
    return error / (scale + 1e-8 * teacher.square().mean() + 1e-12)


def output_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    if kind == "kl" and student.dim() >= 1 and student.shape[-1] > 1:
        s = F.log_softmax(student.reshape(-1, student.shape[-1]) / temperature, -1)
        t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]) / temperature, -1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    if kind == "cosine" and student.dim() >= 1 and student.shape[-1] > 1:
        return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-12)).mean()
    return normalized_mse(student, teacher)


@dataclass
class Terms:
    """One batch's loss and its parts (floats for the report)."""

    total: torch.Tensor
    outputs: float = 0.0
    features: float = 0.0
    labels: float = 0.0


def objective(
    student: list[torch.Tensor], teacher: list[torch.Tensor], *, outputs: int, kind: str,
    temperature: float, feature_weight: float, labels: torch.Tensor | None,
    label_weight: float,
) -> Terms:  # fmt: skip
    """`student`/`teacher`: the distilled outputs first (`outputs` of them), then features."""
    parts = [output_loss(kind, s, t, temperature)
             for s, t in zip(student[:outputs], teacher[:outputs], strict=True)]  # fmt: skip
    out = torch.stack(parts).mean() if parts else student[0].new_zeros(())
    total = out
    feats = [normalized_mse(s, t) for s, t in zip(student[outputs:], teacher[outputs:],
                                                     strict=True)]  # fmt: skip
    feat = torch.stack(feats).mean() if feats else out.new_zeros(())
    if feats and feature_weight:
        total = total + feature_weight * feat
    lab = out.new_zeros(())
    if labels is not None:
        logits = student[0].reshape(-1, student[0].shape[-1])
        lab = F.cross_entropy(logits, labels.reshape(-1))
        total = total + label_weight * lab
    return Terms(total, float(out.detach()), float(feat.detach()), float(lab.detach()))


def learning_rate(step: int, total: int, base: float, schedule: str, warmup: float) -> float:
    """The rate at `step` of `total`: a linear warmup over the first `warmup` fraction, then
    cosine or linear decay to zero (or constant). A pure function of the step, so a resumed
    run continues the same curve."""
    ramp = round(warmup * total)
    if step < ramp:
        return base * (step + 1) / ramp
    if schedule == "constant":
        return base
    progress = (step - ramp) / max(1, total - ramp)
    if schedule == "linear":
        return base * (1 - progress)
    return base * 0.5 * (1 + math.cos(math.pi * progress))
