"""A leaner eval-only forward pass over the inference form (``fold_batch_norms``): same function,
fewer passes over memory.

The plain forward is written for clarity and training; at inference most of its non-convolution
time is memory traffic that can be skipped without changing a single arithmetic result:

- each cell output is ReLU'd once and the result shared (the next cell's 1x1 and the cell after
  next's two-back path both ReLU the same tensor), and inside a cell ``relu(h0)`` (three
  consumers) and ``relu(h1)`` (two) are computed once;
- the ReLU between the two separable convolutions of a branch is fused into the first pointwise
  convolution (oneDNN post-op), and each block's sum into the second branch's last convolution;
- ``max_pool(h0)`` appears twice in a cell (blocks 1 and 3): computed once;
- max pools with TF's odd bottom/right padding use ``ceil_mode`` instead of an explicit -inf pad
  (identical windows); the factorized reduction reads the even positions with a stride-2 1x1
  convolution and pads only the quarter-size odd sub-sample, never the full-size input.

What remains are the convolutions, one ReLU and one concatenation per cell, the max pools, and the
zero pad of a stride-2 depthwise convolution where TF's padding is asymmetric. The function is the
plain model's up to float rounding (fused additions round once instead of twice), and
``tests/test_inference_form.py`` checks that at several sizes. Works in float32 and bfloat16.

A bounded model (``use_bounded_activation``) runs the same plan with ReLU6 for every ReLU (oneDNN's
``hardtanh`` post-op with [0, 6]) and each branch's [-6, 6] clip fused into its last convolution
(``hardtanh`` [-6, 6]). Its block sums cannot fuse (the clip comes between the convolution and the
add, and oneDNN has no ReLU6 after a binary add), so they are one add and one in-place ReLU6. A
bounded cell's output already lies in [0, 6], so the ReLU6 the next cells apply to it is skipped
(exactly the identity); so is the clip of a max pool over ReLU6'd values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.cell import PNASNET5_BLOCKS, MaxPoolBranch, NoneBranch, SeparableBranch
from ..model.network import PNASNet
from ..model.ops import tf_same_padding
from .cpu import cpu_support

_MKLDNN = getattr(torch.ops, "mkldnn", None)


def _has_fused_ops() -> bool:
    """Whether the fused oneDNN convolution operators may be used (see :mod:`.cpu`)."""
    return cpu_support().fused_ops


# Post-ops of a convolution: the plain function, and oneDNN's unary attribute with its scalars.
_POST_OPS = {
    "relu": (F.relu, "relu", []),
    "relu6": (F.relu6, "hardtanh", [0.0, 6.0]),
    "clip": (lambda y: y.clamp_(-6.0, 6.0), "hardtanh", [-6.0, 6.0]),  # TF-Slim's clip_by_value(-6, 6)
}


class _Conv:
    """A folded convolution's arguments, resolved once."""

    __slots__ = ("weight", "bias", "stride", "groups", "kernel", "packed")

    def __init__(self, conv: nn.Conv2d, stride: tuple[int, int] | None = None):
        self.packed = None
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = tuple(conv.stride) if stride is None else stride
        self.groups = conv.groups
        self.kernel = tuple(conv.kernel_size)


class FusedForward:
    """Runs the eval-mode function of a folded PNASNet with shared ReLUs and fused post-ops."""

    def __init__(self, net: PNASNet, use_mkldnn: bool | None = None, prepack: bool = True,
                 release_when_packed: bool = False):
        if not getattr(net, "is_folded", False):
            raise ValueError("FusedForward needs the inference form: pnasnet.inference.fold_batch_norms(model)")
        self.net = net
        self.bounded = net.bounded_activation
        self.fused = _has_fused_ops() if use_mkldnn is None else use_mkldnn
        self.prepack = prepack
        # Drop each plain weight as soon as its packed copy exists, so the weights are never held
        # twice, not even during the first pass (the network's own forward cannot run afterwards).
        self.release_when_packed = release_when_packed
        self.conv0 = _Conv(net.conv0)
        self.dtype = net._modules[net.cell_names[0]].conv_1x1.weight.dtype
        self.cells = [self._plan_cell(net._modules[name]) for name in net.cell_names]

    # ----------------------------------------------------------------------------- plan
    def _plan_cell(self, cell) -> dict:
        plan = {"mode": cell.prev_mode, "stride": cell.stride, "conv_1x1": _Conv(cell.conv_1x1)}
        if cell.prev_mode == "factorized":
            plan["path1"] = _Conv(cell.path1_conv, stride=(2, 2))  # reads the even positions
            plan["path2"] = _Conv(cell.path2_conv)
        elif cell.prev_mode == "1x1":
            plan["prev_1x1"] = _Conv(cell.prev_1x1)
        blocks = []
        for i, ((_, left_in), (_, right_in)) in enumerate(PNASNET5_BLOCKS):
            block = cell._modules[f"comb_iter_{i}"]
            sides = []
            for branch, index in ((block.left, left_in), (block.right, right_in)):
                stride = cell.stride if index < 2 else 1
                if isinstance(branch, SeparableBranch):
                    sep1, _, sep2, _ = (branch._modules[n] for n in branch.names)
                    sides.append(("sep", index, stride, (_Conv(sep1.depthwise), _Conv(sep1.pointwise),
                                                         _Conv(sep2.depthwise), _Conv(sep2.pointwise))))
                elif isinstance(branch, MaxPoolBranch):
                    conv = _Conv(branch.conv_1x1) if branch.conv_1x1 is not None else None
                    sides.append(("pool", index, stride, conv))
                elif isinstance(branch, NoneBranch):
                    conv = _Conv(branch.conv_1x1) if branch.conv_1x1 is not None else None
                    sides.append(("none", index, stride, conv))
                else:  # pragma: no cover - the architecture has only these three
                    raise TypeError(f"unknown branch {type(branch).__name__}")
            blocks.append(sides)
        plan["blocks"] = blocks
        return plan

    # ----------------------------------------------------------------------------- primitives
    def _conv(self, x: torch.Tensor, c: _Conv, padding=(0, 0), post: str | None = None,
              add: torch.Tensor | None = None) -> torch.Tensor:
        """Convolution, then ``add`` (with no ``post``) or a post-op ("relu", "relu6", "clip")."""
        if self.fused:
            pad, stride = list(padding), list(c.stride)
            weight = c.packed
            if weight is None:
                if self.prepack:
                    weight = c.packed = torch.ops.mkldnn._reorder_convolution_weight(
                        c.weight, pad, stride, [1, 1], c.groups, list(x.shape))
                    if self.release_when_packed:
                        self._release(c)
                else:
                    weight = c.weight
            if add is not None and add.shape[0] == x.shape[0]:
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, add, weight, c.bias, pad, stride, [1, 1], c.groups, "add", None, None, [], None)
            attr, scalars = ("none", []) if post is None else _POST_OPS[post][1:]
            y = torch.ops.mkldnn._convolution_pointwise(
                x, weight, c.bias, pad, stride, [1, 1], c.groups, attr, scalars, None)
            return y if add is None else y + add
        y = F.conv2d(x, c.weight, c.bias, c.stride, tuple(padding), 1, c.groups)
        if add is not None:
            return y + add
        return y if post is None else _POST_OPS[post][0](y)

    def _same_conv(self, x: torch.Tensor, c: _Conv, post: str | None = None,
                   add: torch.Tensor | None = None) -> torch.Tensor:
        """A convolution with TF SAME padding (any kernel, stride)."""
        top, bottom = tf_same_padding(x.shape[-2], c.kernel[0], c.stride[0])
        left, right = tf_same_padding(x.shape[-1], c.kernel[1], c.stride[1])
        if top == bottom and left == right:
            return self._conv(x, c, (top, left), post, add)
        x = F.pad(x, (left, right, top, bottom))
        return self._conv(x, c, (0, 0), post, add)

    @staticmethod
    def _max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
        """3x3 max pool with TF SAME padding (padded cells never win)."""
        if stride == 1 and min(x.shape[-2:]) >= 2:
            return _max_pool_3x3_s1(x)
        top, bottom = tf_same_padding(x.shape[-2], 3, stride)
        left, right = tf_same_padding(x.shape[-1], 3, stride)
        if (top, left) == (bottom, right) and 2 * top <= 3:
            return F.max_pool2d(x, 3, stride, (top, left))
        if bottom == top + 1 and right == left + 1 and max(top, left) <= 1:
            # One more padded cell at the bottom/right in both dimensions: ceil_mode lets the last
            # window run past the end (cells there are ignored, as TF's -inf padding is) and
            # gives TF's ceil(n / stride) windows; the start is unchanged.
            return F.max_pool2d(x, 3, stride, (top, left), ceil_mode=True)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, 3, stride, 0)

    def _separable(self, x_relu: torch.Tensor, convs, add: torch.Tensor | None) -> torch.Tensor:
        dw1, pw1, dw2, pw2 = convs
        y = self._same_conv(x_relu, dw1)
        y = self._conv(y, pw1, post="relu6" if self.bounded else "relu")  # bn_sep_1 folded, the ReLU before separable_2
        y = self._same_conv(y, dw2)
        if self.bounded:                         # bn_sep_2 folded, the branch's clip
            return self._conv(y, pw2, post="clip")
        return self._conv(y, pw2, add=add)       # bn_sep_2 folded, + the block's other branch

    # ----------------------------------------------------------------------------- cells
    def _cell(self, plan: dict, current: torch.Tensor, current_relu: torch.Tensor,
              prev: torch.Tensor | None, prev_relu: torch.Tensor | None) -> torch.Tensor:
        mode = plan["mode"]
        h1_relu = None
        if mode == "raw":
            h1, h1_relu = current, current_relu
        elif mode == "same":
            h1, h1_relu = prev, prev_relu
        elif mode == "1x1":
            h1 = self._conv(prev_relu, plan["prev_1x1"])
        else:
            h1 = self._factorized(plan, prev_relu)
        h0 = self._conv(current_relu, plan["conv_1x1"])
        hidden = [h0, h1]
        relus: dict[int, torch.Tensor] = {1: h1_relu} if h1_relu is not None else {}
        pools: dict[tuple[int, int], torch.Tensor] = {}
        uses = _pool_uses(plan["blocks"])
        bounded = self.bounded
        clip = "clip" if bounded else None

        def relu_of(index: int) -> torch.Tensor:
            r = relus.get(index)
            if r is None:
                r = relus[index] = F.relu6(hidden[index]) if bounded else F.relu(hidden[index])
            return r

        def simple(side) -> torch.Tensor:
            kind, index, stride, conv = side
            if kind == "pool":
                key = (index, stride)
                pooled = pools.get(key)
                if pooled is None:
                    # bounded: ReLU6 before the pool; the clip after it is then the identity
                    pooled = self._max_pool(relu_of(index) if bounded else hidden[index], stride)
                    if uses.get(key, 0) > 1:
                        pools[key] = pooled
                return pooled if conv is None else self._conv(pooled, conv, post=clip)
            # "none": identity (bounded: ReLU6), or ReLU -> 1x1 (with the stride) -> folded BN (-> clip)
            if conv is None:
                return relu_of(index) if bounded else hidden[index]
            return self._conv(relu_of(index), conv, post=clip)

        for sides in plan["blocks"]:
            (lkind, lindex, _, lconvs), (rkind, rindex, _, rconvs) = sides
            if bounded:  # clipped branches, then ReLU6 of the sum: nothing to fuse the add into
                left = self._separable(relu_of(lindex), lconvs, None) if lkind == "sep" else simple(sides[0])
                right = self._separable(relu_of(rindex), rconvs, None) if rkind == "sep" else simple(sides[1])
                out = F.relu6(left + right, inplace=True)
            elif lkind == "sep" and rkind == "sep":
                other = self._separable(relu_of(lindex), lconvs, None)
                out = self._separable(relu_of(rindex), rconvs, other)
            elif lkind == "sep":
                out = self._separable(relu_of(lindex), lconvs, simple(sides[1]))
            elif rkind == "sep":
                out = self._separable(relu_of(rindex), rconvs, simple(sides[0]))
            else:
                out = simple(sides[0]) + simple(sides[1])
            hidden.append(out)
            if bounded:  # a bounded block's output is ReLU6'd already: its ReLU6 is itself
                relus[len(hidden) - 1] = out
        return torch.cat(hidden[2:], dim=1)

    def _factorized(self, plan: dict, prev_relu: torch.Tensor) -> torch.Tensor:
        # Path 1: the even positions, i.e. a stride-2 1x1 convolution of the whole input.
        path1 = self._conv(prev_relu, plan["path1"])
        # Path 2: the odd positions, and a zero row/column at the end where a side is odd.
        h, w = prev_relu.shape[-2:]
        odd = prev_relu[:, :, 1::2, 1::2]
        odd = F.pad(odd, (0, w % 2, 0, h % 2)) if (h % 2 or w % 2) else odd
        odd = odd.contiguous(memory_format=torch.channels_last) if prev_relu.is_contiguous(
            memory_format=torch.channels_last) else odd.contiguous()
        path2 = self._conv(odd, plan["path2"])
        return torch.cat([path1, path2], dim=1)

    # ----------------------------------------------------------------------------- network
    @staticmethod
    def _release(c: _Conv) -> None:
        """Drop a packed convolution's plain weight (the network's own forward cannot run after)."""
        c.weight.data = torch.empty(0, dtype=c.weight.dtype)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vector of float images in [0, 1] (checked and rescaled as the model does)."""
        return self.body(self.net._prepare(images))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vector of already rescaled images ([-1, 1], the model's dtype)."""
        x = self._conv(x, self.conv0)  # VALID: no padding; no ReLU (consumers apply their own)
        x = x.to(self.dtype)  # a float32 stem in front of bfloat16 cells (see EagerModel)
        prev = prev_relu = None
        current, current_relu = x, (F.relu6(x) if self.bounded else F.relu(x))
        for plan in self.cells:
            out = self._cell(plan, current, current_relu, prev, prev_relu)
            prev, prev_relu = current, current_relu
            # A bounded cell's output is a concatenation of ReLU6 outputs: its ReLU6 is itself.
            current, current_relu = out, (out if self.bounded else F.relu(out))
        return current_relu.mean(dim=(2, 3), dtype=torch.float32)


def plain_body(net: PNASNet, x: torch.Tensor) -> torch.Tensor:
    """The model's own eval forward from rescaled images to the feature vector (for torch.compile)."""
    x = net.conv0_bn(net.conv0(x))
    x = x.to(net._modules[net.cell_names[0]].conv_1x1.weight.dtype)  # float32 stem, maybe bf16 cells
    prev, current = None, x
    for name in net.cell_names:
        prev, current = current, net._modules[name](current, prev)
    return net.activation(current).mean(dim=(2, 3))


def _max_pool_3x3_s1(x: torch.Tensor) -> torch.Tensor:
    """3x3 / stride 1 max pool with SAME padding (borders take the max over the cells that exist),
    as the maximum along H and then along W of neighbouring rows / columns: four elementwise passes,
    about twice as fast as PyTorch's CPU max pool, which also computes indices. Exact (a maximum)."""
    rows = torch.empty_like(x)
    torch.maximum(x[:, :, 1:], x[:, :, :-1], out=rows[:, :, 1:])
    rows[:, :, :1] = x[:, :, :1]
    torch.maximum(rows[:, :, :-1], x[:, :, 1:], out=rows[:, :, :-1])
    out = torch.empty_like(x)
    torch.maximum(rows[..., 1:], rows[..., :-1], out=out[..., 1:])
    out[..., :1] = rows[..., :1]
    torch.maximum(out[..., :-1], rows[..., 1:], out=out[..., :-1])
    return out


def _pool_uses(blocks) -> dict[tuple[int, int], int]:
    uses: dict[tuple[int, int], int] = {}
    for sides in blocks:
        for kind, index, stride, conv in sides:
            if kind == "pool" and conv is None:
                uses[(index, stride)] = uses.get((index, stride), 0) + 1
    return uses
