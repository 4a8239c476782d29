"""The building blocks of PNASNet-5 with TensorFlow's semantics.

TF-Slim pads "SAME" convolutions and pools so that the output has ``ceil(n / stride)`` cells and puts
the odd extra padding cell at the *bottom/right*. PyTorch's ``padding=`` is always symmetric, which
is only equal to TF when the total padding is even. The modules here compute TF's padding from the
actual input size on every call, so the network is exact at any input size, not only the native one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# TF-Slim's nasnet arg scope: batch_norm epsilon=0.001 (PyTorch's default is 1e-5).
BN_EPSILON = 1e-3
# TF-Hub v3 modules: batch-norm moving averages decay 0.99 when fine-tuning (TF-Slim trained with
# 0.9997). PyTorch's momentum is the weight of the *new* value, i.e. 1 - decay.
DEFAULT_BN_DECAY = 0.99


# TF-Slim nasnet_utils.CLIP_BY_VALUE_CAP: with ``use_bounded_activation`` ReLU becomes ReLU6 and the
# branch outputs are clipped to [-6, 6] (bounded values quantize better).
CLIP_CAP = 6.0


def activation(x: torch.Tensor, bounded: bool) -> torch.Tensor:
    """The network's nonlinearity: ReLU, or ReLU6 (``min(max(x, 0), 6)``) when ``bounded``."""
    return F.relu6(x) if bounded else F.relu(x)


def clip(x: torch.Tensor, bounded: bool) -> torch.Tensor:
    """TF-Slim's ``clip_by_value(x, -6, 6)`` of a branch output when ``bounded``, else ``x``."""
    return x.clamp(-CLIP_CAP, CLIP_CAP) if bounded else x


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one spatial dimension.

    out = ceil(size / stride); the total padding makes the last window end at the last pixel; TF
    puts floor(total / 2) before and the rest after, so odd totals pad one more at bottom/right.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_pads(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]):
    top, bottom = tf_same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = tf_same_padding(x.shape[-1], kernel[1], stride[1])
    return top, bottom, left, right


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` (no bias unless asked) with TF "SAME" padding computed per call.

    Symmetric padding is passed to the convolution itself (no copy of the input); only the
    asymmetric case (even input at stride 2) pads explicitly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = _same_pads(x, self.kernel_size, self.stride)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


class MaxPool2dSame(nn.Module):
    """Max pool with TF "SAME" padding; padded cells never win (TF ignores them, i.e. -inf)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        top, bottom, left, right = _same_pads(x, (k, k), (s, s))
        if top == bottom and left == right and 2 * top <= k:
            # PyTorch's own padding of max_pool is implicit -inf: exactly TF's rule.
            return F.max_pool2d(x, k, s, (top, left))
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, k, s, 0)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=TF-SAME"


class SeparableConv2d(nn.Module):
    """TF-Slim ``separable_conv2d`` with depth multiplier 1: depthwise KxK (carrying the stride,
    SAME padding), then pointwise 1x1, no biases. TF names: ``depthwise_weights``,
    ``pointwise_weights``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=1.0 - DEFAULT_BN_DECAY)


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Drop a whole branch per example with probability ``1 - keep_prob`` (TF-Slim ``drop_path``).

    Like TF: keep = floor(keep_prob + U[0,1)), a [N,1,1,1] mask, kept examples scaled by 1/keep_prob
    (TF computes 1/keep_prob in double precision and casts it, so the scaled values round the same).
    """
    if keep_prob >= 1.0:
        return x
    noise = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device)
    mask = torch.floor(keep_prob + noise)
    return x * (mask * (1.0 / keep_prob))


def subsample_even(x: torch.Tensor) -> torch.Tensor:
    """TF's 1x1 average pool with stride 2 and VALID padding: the pixels at even positions."""
    return x[:, :, ::2, ::2]


def subsample_odd_padded(x: torch.Tensor) -> torch.Tensor:
    """Factorized reduction's second path: TF pads one zero row/column at the bottom/right, drops
    the first row/column and subsamples, i.e. it takes odd positions and, when a side is odd, a
    last row/column of zeros. Output is ceil(n/2) like the first path."""
    x = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
    return x[:, :, ::2, ::2]
