"""The PNASNet-5 cell (paper Fig. 1; TF-Slim ``PNasNetNormalCell`` on ``NasNetABaseCell``).

One cell type serves everywhere: a normal cell at stride 1, a reduction cell at stride 2. Inside a
cell the hidden states are numbered as in TF-Slim: ``h[0]`` the processed current input (the previous
cell's output), ``h[1]`` the processed input from two cells back, ``h[2..6]`` the five block outputs.
The output concatenates the five block outputs, so a cell has ``5 * filter_size`` channels.

Module names repeat TF-Slim's variable scopes (``comb_iter_0/left/separable_5x5_1`` ...) so that a
TF variable name maps to a parameter by a short rule (see ``pnasnet.weights.tf_slim_names``); the one
scope that is not a Python identifier, ``1x1``, is called ``conv_1x1`` here.

``bounded=True`` is TF-Slim's ``use_bounded_activation`` (``nasnet_utils.NasNetABaseCell``): every
ReLU becomes a ReLU6; the max pools and the ``none`` branch take ReLU6'd inputs too; each branch
output (after its last batch norm, before drop path) is clipped to [-6, 6]; and each block's sum goes
through a ReLU6, so a bounded cell's output lies in [0, 6].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import MaxPool2dSame, SeparableConv2d, activation, batch_norm, clip, drop_path
from .ops import subsample_even, subsample_odd_padded

# (operation, input hidden state) for the left and right side of each of the five blocks.
PNASNET5_BLOCKS = (
    (("separable_5x5", 1), ("max_pool_3x3", 1)),
    (("separable_7x7", 0), ("max_pool_3x3", 0)),
    (("separable_5x5", 0), ("separable_3x3", 0)),
    (("separable_3x3", 4), ("max_pool_3x3", 0)),
    (("separable_3x3", 1), ("none", 0)),
)


class SeparableBranch(nn.Module):
    """``separable_KxK_2``: twice [ReLU -> separable conv -> BN]; the first carries the stride.
    Bounded: ReLU6 instead of ReLU, and the output clipped to [-6, 6]."""

    droppable = True

    def __init__(self, in_channels: int, filters: int, kernel_size: int, stride: int, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        k = kernel_size
        self.names = (f"separable_{k}x{k}_1", f"bn_sep_{k}x{k}_1", f"separable_{k}x{k}_2", f"bn_sep_{k}x{k}_2")
        self.add_module(self.names[0], SeparableConv2d(in_channels, filters, k, stride))
        self.add_module(self.names[1], batch_norm(filters))
        self.add_module(self.names[2], SeparableConv2d(filters, filters, k, 1))
        self.add_module(self.names[3], batch_norm(filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sep1, bn1, sep2, bn2 = (self._modules[n] for n in self.names)
        x = bn1(sep1(activation(x, self.bounded)))
        x = bn2(sep2(activation(x, self.bounded)))
        return clip(x, self.bounded)


class MaxPoolBranch(nn.Module):
    """``max_pool_3x3``: no ReLU before the pool; a 1x1 conv + BN (no ReLU) after it only when the
    input does not already have ``filters`` channels (in PNASNet-5: cell_stem_0's raw stem input).
    Bounded: ReLU6 before the pool, and the output clipped to [-6, 6]."""

    droppable = True

    def __init__(self, in_channels: int, filters: int, stride: int, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        self.pool = MaxPool2dSame(3, stride)
        if in_channels != filters:
            self.conv_1x1 = nn.Conv2d(in_channels, filters, 1, bias=False)
            self.bn_1 = batch_norm(filters)
        else:
            self.conv_1x1 = self.bn_1 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounded:
            x = F.relu6(x)
        x = self.pool(x)
        if self.conv_1x1 is not None:
            x = self.bn_1(self.conv_1x1(x))
        return clip(x, self.bounded)


class NoneBranch(nn.Module):
    """``none``: identity, unless the stride or the width must change: then ReLU -> 1x1 conv with
    the stride -> BN. TF never applies drop path to this branch. Bounded: ReLU6 first in both cases
    (so the identity becomes a ReLU6), and the 1x1's output clipped to [-6, 6]."""

    droppable = False

    def __init__(self, in_channels: int, filters: int, stride: int, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        if stride > 1 or in_channels != filters:
            # A 1x1 kernel never needs SAME padding: at stride 2 it reads the even positions.
            self.conv_1x1 = nn.Conv2d(in_channels, filters, 1, stride=stride, bias=False)
            self.bn_1 = batch_norm(filters)
        else:
            self.conv_1x1 = self.bn_1 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_1x1 is None:
            return F.relu6(x) if self.bounded else x
        return clip(self.bn_1(self.conv_1x1(activation(x, self.bounded))), self.bounded)


def make_branch(operation: str, in_channels: int, filters: int, stride: int, bounded: bool = False) -> nn.Module:
    if operation.startswith("separable_"):
        kernel = int(operation.split("_")[1].split("x")[0])
        return SeparableBranch(in_channels, filters, kernel, stride, bounded)
    if operation == "max_pool_3x3":
        return MaxPoolBranch(in_channels, filters, stride, bounded)
    if operation == "none":
        return NoneBranch(in_channels, filters, stride, bounded)
    raise ValueError(f"unknown PNASNet operation {operation!r}")


class Block(nn.Module):
    """``comb_iter_i``: two branches added together (TF scope ``combine`` has no variables)."""

    def __init__(self, left: nn.Module, right: nn.Module, left_input: int, right_input: int):
        super().__init__()
        self.left = left
        self.right = right
        self.left_input = left_input
        self.right_input = right_input


class PNASNetCell(nn.Module):
    """One PNASNet-5 cell.

    Args:
        in_channels: channels of the current input (previous cell's output).
        prev_channels: channels of the input from two cells back, or None for the first stem cell,
            which has no such input and uses its raw current input instead (TF: ``prev_layer=None``).
        filters: the cell's filter size (output has ``5 * filters`` channels).
        stride: 1 for a normal cell, 2 for a reduction cell.
        prev_is_larger: the two-back input has twice the current input's resolution, so it goes
            through a factorized reduction (TF decides this by comparing widths).
        drop_path_keep_prob: the final ("held") keep probability of this cell's branches.
        bounded: TF-Slim's ``use_bounded_activation`` (ReLU6 and clipped branch outputs).
    """

    def __init__(self, in_channels: int, prev_channels: int | None, filters: int, stride: int,
                 prev_is_larger: bool, drop_path_keep_prob: float = 1.0, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        self.filters = filters
        self.stride = stride
        self.drop_path_keep_prob = drop_path_keep_prob
        # Fraction of the way along TF's linear drop-path ramp; 1.0 = the held final value (TF-Hub).
        self.drop_path_progress = 1.0

        # Preparation of the two-back input (TF ``_reduce_prev_layer``), variables in the cell scope.
        self.prev_mode = "raw" if prev_channels is None else (
            "factorized" if prev_is_larger else ("1x1" if prev_channels != filters else "same"))
        if self.prev_mode == "factorized":
            # TF gives the odd filter to path 2 (PNASNet-5 Mobile: 13 + 14 in cell_stem_1).
            self.path1_conv = nn.Conv2d(prev_channels, filters // 2, 1, bias=False)
            self.path2_conv = nn.Conv2d(prev_channels, filters // 2 + filters % 2, 1, bias=False)
            self.final_path_bn = batch_norm(filters)
        elif self.prev_mode == "1x1":
            self.prev_1x1 = nn.Conv2d(prev_channels, filters, 1, bias=False)
            self.prev_bn = batch_norm(filters)
        h1_channels = in_channels if prev_channels is None else filters

        self.conv_1x1 = nn.Conv2d(in_channels, filters, 1, bias=False)
        self.beginning_bn = batch_norm(filters)

        channels = [filters, h1_channels]
        for i, ((left_op, left_in), (right_op, right_in)) in enumerate(PNASNET5_BLOCKS):
            # Only branches reading an original input (h0/h1) carry the cell's stride.
            left = make_branch(left_op, channels[left_in], filters, stride if left_in < 2 else 1, bounded)
            right = make_branch(right_op, channels[right_in], filters, stride if right_in < 2 else 1, bounded)
            self.add_module(f"comb_iter_{i}", Block(left, right, left_in, right_in))
            channels.append(filters)

    @property
    def out_channels(self) -> int:
        return 5 * self.filters

    def _prepare_prev(self, prev: torch.Tensor | None, current: torch.Tensor) -> torch.Tensor:
        if self.prev_mode == "raw":
            return current
        if self.prev_mode == "same":
            return prev
        prev = activation(prev, self.bounded)
        if self.prev_mode == "1x1":
            return self.prev_bn(self.prev_1x1(prev))
        path1 = self.path1_conv(subsample_even(prev))
        path2 = self.path2_conv(subsample_odd_padded(prev))
        return self.final_path_bn(torch.cat([path1, path2], dim=1))

    def _keep_prob(self) -> float:
        # TF ramps keep prob from 1 to its final value over training; fine-tuning holds the end.
        return 1.0 - self.drop_path_progress * (1.0 - self.drop_path_keep_prob)

    def forward(self, current: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        h1 = self._prepare_prev(prev, current)
        h0 = self.beginning_bn(self.conv_1x1(activation(current, self.bounded)))
        hidden = [h0, h1]
        keep_prob = self._keep_prob() if self.training else 1.0
        for i in range(len(PNASNET5_BLOCKS)):
            block = self._modules[f"comb_iter_{i}"]
            outputs = []
            for branch, index in ((block.left, block.left_input), (block.right, block.right_input)):
                y = branch(hidden[index])
                if branch.droppable:
                    y = drop_path(y, keep_prob)
                outputs.append(y)
            total = outputs[0] + outputs[1]
            hidden.append(F.relu6(total) if self.bounded else total)
        return torch.cat(hidden[2:], dim=1)
