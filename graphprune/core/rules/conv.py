"""Conv and ConvTranspose (1-D, 2-D, 3-D; plain, grouped, depthwise).

Spec: Conv weight is (M, C/group, k...), input channel c belongs to group c // (C/group)
and output channel m to group m // (M/group). ConvTranspose weight is (C, M/group, k...).
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
from .context import Context
from .registry import rule


def _weight_shape(ctx: Context, weight: int = 1) -> tuple[int, ...] | None:
    """The constant weight's shape; None (after stopping tracked inputs) when the weights are
    computed at runtime or channels arrive anywhere but the data input's axis 1."""
    weight_shape = ctx.constant_shape(weight)
    x = ctx.layout(0)
    if (
        weight_shape is None
        or (x is not None and x.axis != 1)
        or any(index in (1, 2) for index, _ in ctx.tracked())
    ):
        ctx.block("weights computed at runtime" if weight_shape is None else "channels off axis 1")
        return None
    return weight_shape


@rule("Conv")
def conv(ctx: Context) -> None:
    conv_channels(ctx)


def conv_channels(ctx: Context, weight: int = 1, bias: int | None = 2) -> np.ndarray | None:
    """Input channels are absorbed by weight axis 1; output channels are new.

    Depthwise (one input channel per group): output channel m is computed from input
    channel m // multiplier alone, so it *is* that channel: the atoms pass through and
    `group` shrinks with them. Other grouped convs keep their group count; each group must
    lose the same number of input channels and of output channels. `weight` and `bias`
    are their input indices (QLinearConv has its own; ConvInteger has no bias). Returns the
    output channels, None when the node stopped them."""
    x = ctx.layout(0)
    weight_shape = _weight_shape(ctx, weight)
    if weight_shape is None:
        return None
    groups = int(ctx.attr("group", 1))
    out_channels, per_group = weight_shape[0], weight_shape[1]
    if groups == 1:
        if x is not None:
            ctx.slice(weight, 1, x.atoms, role="weight", absorbs=True)
        out = ctx.new_atoms(out_channels)
    elif per_group == 1 and x is not None:
        out = np.repeat(x.atoms, out_channels // groups)
        ctx.set_count(ctx.target(attribute="group"), x.atoms)
    elif out_channels // groups == 1:
        if x is not None:
            ctx.block("grouped conv with one output channel per group")
        return None
    else:
        if x is not None:
            blocks = x.atoms.reshape(groups, per_group)
            ctx.slice_grouped_input(weight, blocks)
            ctx.equal_blocks(blocks)
        out = ctx.new_atoms(out_channels)
        ctx.equal_blocks(out.reshape(groups, out_channels // groups))
    ctx.slice(weight, 0, out, role="weight")
    if bias is not None and ctx.view.input(ctx.node, bias) is not None:
        if ctx.constant_shape(bias) is None:
            ctx.block("bias computed at runtime")
            ctx.freeze_own_atoms("bias computed at runtime")
            return None
        ctx.slice(bias, 0, out, role="bias")
    ctx.emit(0, Layout(1, out))
    return out


@rule("FusedConv", domain="com.microsoft")
def fused_conv(ctx: Context) -> None:
    """com.microsoft.FusedConv: Conv (same inputs and attributes), plus Z (input 3, Y's
    shape) added to its output, then an elementwise `activation` (Relu, Sigmoid, Tanh,
    LeakyRelu, Clip, HardSigmoid; activation_params are scalars). Z position by position
    is the output's channels: a tracked Z is coupled with them, a constant one sliced."""
    if ctx.view.input(ctx.node, 3) is None:
        conv_channels(ctx)
        return
    z, z_shape = ctx.layout(3), ctx.input_shape(3)
    if (z is not None and z.axis != 1) or (z is None and ctx.constant(3) is None):
        ctx.block("the residual input Z is computed from untracked channels")
        return
    out = conv_channels(ctx)
    if out is None:
        return
    if z is not None:
        ctx.couple(out, z.atoms)
    elif z_shape is not None and len(z_shape) > 1 and z_shape[1] != 1:
        ctx.slice(3, 1, out)


@rule("ConvTranspose")
def conv_transpose(ctx: Context) -> None:
    """Input channels are absorbed by weight axis 0, output channels are weight axis 1
    (times group). Depthwise transposed convs pass channels through like Conv."""
    x = ctx.layout(0)
    weight_shape = _weight_shape(ctx)
    if weight_shape is None:
        return
    groups = int(ctx.attr("group", 1))
    in_channels, per_group = weight_shape[0], weight_shape[1]
    if groups == 1:
        if x is not None:
            ctx.slice(1, 0, x.atoms, role="weight", absorbs=True)
        out = ctx.new_atoms(per_group)
        ctx.slice(1, 1, out, role="weight")
    elif groups == in_channels and x is not None:
        out = np.repeat(x.atoms, per_group)
        ctx.slice(1, 0, x.atoms, role="weight")
        ctx.set_count(ctx.target(attribute="group"), x.atoms)
    else:
        if x is not None:
            ctx.block("grouped ConvTranspose is not supported")
        return
    if ctx.view.input(ctx.node, 2) is not None:
        ctx.slice(2, 0, out, role="bias")
    ctx.emit(0, Layout(1, out))
