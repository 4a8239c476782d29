"""The inference form of a PNASNet: every batch norm folded into the convolution before it, channels-last.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) * gamma / sqrt(var + eps) +
beta``, and every batch norm of PNASNet-5 follows a convolution with no bias and nothing in between
(``SeparableConv2d`` ends in its pointwise 1x1; the factorized reduction's ``final_path_bn`` follows a
concatenation of two 1x1 convolutions, so each path's conv takes its slice of the statistics). So the
map goes into the convolution: ``W' = W * s`` per output channel and ``b' = (b - mean) * s + beta``, with
``s = gamma / sqrt(var + eps)``, computed in float64 and rounded once to the weights' dtype; the batch
norm module becomes ``nn.Identity``. The result differs from the plain model by float rounding only
(about 1e-6 relative) and skips one pass over every activation.

The conversion works on a deep copy (the training form stays as it is) unless asked to convert in place. The folded model is a
``PNASNet`` still (``classify``, ``features``, ``forward_endpoints``), fixed in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..model.network import PNASNet


class InferenceOnlyError(RuntimeError):
    pass


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode batch norm, in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a batch norm without running statistics (track_running_stats=False)")
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: slice | None = None) -> None:
    """Fold ``bn`` (or the ``channels`` slice of it, for a batch norm after a concatenation) into
    ``conv`` in place: the conv gets a bias if it had none."""
    scale, shift = _bn_scale_shift(bn)
    if channels is not None:
        scale, shift = scale[channels], shift[channels]
    if scale.numel() != conv.out_channels:
        raise ValueError(f"batch norm over {scale.numel()} channels after a conv with {conv.out_channels}")
    weight = conv.weight.detach()
    dtype = weight.dtype
    w64 = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b64 = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    conv.weight = nn.Parameter(w64.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(b64.to(dtype), requires_grad=False)


def _fold_pairs(model: PNASNet):
    """Yield (conv, bn, channel slice or None, owner module, bn attribute name) for each batch norm."""
    yield model.conv0, model.conv0_bn, None, model, "conv0_bn"
    for cell_name in model.cell_names:
        cell = model._modules[cell_name]
        yield cell.conv_1x1, cell.beginning_bn, None, cell, "beginning_bn"
        if cell.prev_mode == "factorized":
            c1 = cell.path1_conv.out_channels
            c2 = cell.path2_conv.out_channels
            yield cell.path1_conv, cell.final_path_bn, slice(0, c1), None, None
            yield cell.path2_conv, cell.final_path_bn, slice(c1, c1 + c2), cell, "final_path_bn"
        elif cell.prev_mode == "1x1":
            yield cell.prev_1x1, cell.prev_bn, None, cell, "prev_bn"
        for i in range(5):
            block = cell._modules[f"comb_iter_{i}"]
            for branch in (block.left, block.right):
                names = getattr(branch, "names", None)
                if names is not None:  # SeparableBranch: sep1, bn1, sep2, bn2
                    for sep, bn in ((names[0], names[1]), (names[2], names[3])):
                        yield branch._modules[sep].pointwise, branch._modules[bn], None, branch, bn
                elif getattr(branch, "conv_1x1", None) is not None:
                    yield branch.conv_1x1, branch.bn_1, None, branch, "bn_1"
    if model.aux_cell is not None:
        head = model._modules[f"aux_{model.aux_cell}"].aux_logits
        yield head.proj, head.aux_bn0, None, head, "aux_bn0"
        yield head.Conv, head.aux_bn1, None, head, "aux_bn1"


def _no_train(self, mode: bool = True):
    if mode:
        raise InferenceOnlyError("this is the inference form (batch norms folded into the convolutions): "
                                 "it cannot train; fine-tune the original model instead")
    return nn.Module.train(self, False)


def fold_batch_norms(model: PNASNet, *, channels_last: bool = True, in_place: bool = False) -> PNASNet:
    """The inference form of ``model``: a deep copy with every batch norm folded into the conv before
    it (float64, then cast), the batch norms replaced by ``nn.Identity``, eval mode, no gradients, and
    (by default) channels-last weights so that channels-last activations flow through.

    ``in_place=True`` converts ``model`` itself instead of a copy, so the weights are never held
    twice (the command line does this: it has no use for the training form). ``model`` is then the
    inference form and cannot train.

    Inputs may be given in any memory format; ``classify`` / ``features`` of the result convert
    them with ``to_channels_last`` first only if you do (see ``pnasnet.inference.optimize``, which does).
    """
    if not isinstance(model, PNASNet):
        raise TypeError(f"expected a PNASNet, got {type(model).__name__}")
    if getattr(model, "is_folded", False):
        return model
    folded = model if in_place else copy.deepcopy(model)
    folded.eval()
    pairs = list(_fold_pairs(folded))
    for conv, bn, channels, owner, attr in pairs:
        fold_conv_bn(conv, bn, channels)
    for conv, bn, channels, owner, attr in pairs:
        if owner is not None:
            setattr(owner, attr, nn.Identity())
    remaining = [name for name, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if remaining:  # a structure this function does not know: refuse rather than compute another function
        raise RuntimeError(f"batch norms left unfolded: {remaining}")
    for p in folded.parameters():
        p.requires_grad_(False)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    folded.is_folded = True
    # Training this copy would train a different parameterisation: refuse it explicitly.
    folded.train = _no_train.__get__(folded)
    return folded


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
