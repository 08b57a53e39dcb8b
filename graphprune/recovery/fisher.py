"""Output-aware calibration statistics: how much the model's *output* moves when a channel
goes, from gradients through the torch lowering (Kwon et al., "A Fast Post-Training
Pruning Framework for Transformers", NeurIPS 2022).

Put a mask m_c = 1 on every input channel c of a consumer (the weight that absorbs the
channel). Removing c is m_c = 0, and to first order the output changes by -dout/dm_c, with
dout/dm_c = sum over the sample's positions of a_c * dout/da_c (a the consumer's input).
Label-free, the loss is the output's projection on a random direction, L = r . out with r
standard normal per output element (zero at padding positions), so E_r[(dL/dm_c)^2] =
||dout/dm_c||^2: the expected squared change of the output, summed over samples, is the
empirical Fisher `fisher[consumer]` (one value per input position). Samples are
independent along axis 0, so one backward pass per batch gives every sample's gradient.

For the OBS criterion under least-squares repair ("obs-fisher", `posttrain.criteria`), the same pass
accumulates G = sum over positions of g g^T, g = dL/dy the gradient at the consumer's
output y (`output_gram[consumer]`): the metric in which the consumer's output error costs
the model's output, E[(g . dy)^2] ~ tr(E[dy dy^T] G). Both are in units of the output, so
they rank channels of different layers together (`--global --normalization none`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.analysis import Analysis
from ..errors import GraphpruneError
from ..posttrain.data import CalibrationData, batches, padding_input, padding_mask
from ..posttrain.statistics import CalibrationStats, Consumer
from .lowering import LoweredModel, feeds_to_torch
from .registry import Unsupported


def output_sensitivity(
    analysis: Analysis,
    data: CalibrationData,
    stats: CalibrationStats,
    *,
    criterion: str = "fisher",
    batch: int = 32,
    seed: int = 0,
    projections: int = 1,
    shared_axes: tuple[int, ...] = (),
) -> None:
    """Fill `stats.fisher` and `stats.output_gram` for every consumer of `stats`, from the
    gradients of `projections` random projections of the outputs per calibration batch.
    `shared_axes`: output axes along which the direction is one, so that L projects the
    sum over them (axis 1 of a sentence encoder: the mean-pooled embedding's change)."""
    model = analysis.view.model
    try:
        lowered = LoweredModel(model)
    except Unsupported as error:
        raise GraphpruneError(f"criterion {criterion!r} needs gradients: {error}") from None
    lowered.eval()
    consumers = stats.consumers
    outputs = [o.name for o in model.graph.output]
    inputs = [c.tensor for c in consumers]
    results = [analysis.view.nodes[c.node].output[0] for c in consumers]
    names = list(dict.fromkeys(outputs + inputs + results))
    mask_name = padding_input(model, data)
    generator = torch.Generator().manual_seed(seed)
    fisher = {c.node: np.zeros(c.positions.size) for c in consumers}
    gram: dict[str, np.ndarray] = {}
    samples = 0
    # The batch size calibration ran at: the one the model accepts (a fixed 1, say).
    for feeds in batches(model, data, stats.batch or batch):
        real = padding_mask(feeds, mask_name)
        values = dict(zip(names, lowered(feeds_to_torch(feeds, lowered.device), names),
                          strict=True))  # fmt: skip
        samples += next(iter(feeds.values())).shape[0]
        wanted = [values[n] for n in dict.fromkeys(inputs + results)]
        if not all(v.is_floating_point() and v.requires_grad for v in wanted):
            raise GraphpruneError(f"criterion {criterion!r}: a consumer's input has no gradient")
        for draw in range(projections):
            loss = sum(_projection(values[o], real, generator, shared_axes) for o in outputs
                       if values[o].is_floating_point())  # fmt: skip
            if not isinstance(loss, torch.Tensor):
                raise GraphpruneError(f"criterion {criterion!r}: the model has no float output")
            grads = torch.autograd.grad(loss, wanted, retain_graph=draw + 1 < projections,
                                        allow_unused=True)  # fmt: skip
            by_name = dict(zip(dict.fromkeys(inputs + results), grads, strict=True))
            for consumer, result in zip(consumers, results, strict=True):
                value, grad = values[consumer.tensor], by_name[consumer.tensor]
                fisher[consumer.node] += _mask_fisher(value, grad, consumer)
                step = _gram(by_name[result], consumer)
                if step is not None:
                    gram[consumer.node] = gram.get(consumer.node, 0) + step
    if samples == 0:
        raise GraphpruneError("the calibration data holds no samples")
    stats.fisher = {k: v / (samples * projections) for k, v in fisher.items()}
    stats.output_gram = {k: v / (samples * projections) for k, v in gram.items()}


def _projection(output: torch.Tensor, real: np.ndarray | None, generator,
                shared_axes: tuple[int, ...] = ()) -> torch.Tensor:  # fmt: skip
    """r . output, r standard normal (one value along `shared_axes`), zero where the
    output's leading [batch, sequence] positions are padding."""
    shape = [1 if axis in shared_axes else n for axis, n in enumerate(output.shape)]
    direction = torch.randn(shape, generator=generator, dtype=output.dtype)
    if real is not None and tuple(output.shape[:2]) == real.shape:
        keep = torch.from_numpy(real).to(output.dtype)
        direction = direction * keep.reshape(*real.shape, *[1] * (output.dim() - 2))
    return (direction * output).sum()


def _mask_fisher(value: torch.Tensor, grad: torch.Tensor | None, consumer: Consumer):
    """sum over samples of (dL/dm_c)^2, dL/dm_c = the sample's sum of a_c * dL/da_c."""
    if grad is None:
        return 0.0
    axis = consumer.channel_axis % value.dim()
    if axis == 0:  # no sample axis to sum the positions of one sample over
        raise GraphpruneError(f"'{consumer.node}': channels on the batch axis")
    product = (value * grad).detach().double().movedim(axis, -1)
    per_sample = product.reshape(product.shape[0], -1, product.shape[-1]).sum(1)
    return (per_sample**2).sum(0).numpy()


def _gram(grad: torch.Tensor | None, consumer: Consumer) -> np.ndarray | None:
    """sum over positions of g g^T, g the gradient at the consumer's output channels."""
    if grad is None:  # no output depends on the consumer
        return None
    axis = 1 if consumer.op in ("Conv", "ConvTranspose") else -1  # MatMul, Gemm: the last
    rows = grad.detach().double().movedim(axis, -1)
    rows = rows.reshape(-1, rows.shape[-1])
    return (rows.T @ rows).numpy()
