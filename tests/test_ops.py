"""TF "SAME" convolutions and pools against an independent float64 reference.

The reference follows TF's documented definition directly, one output pixel at a time: for output
index i the window starts at i*stride - pad_before, with out = ceil(n/stride),
pad_total = max((out-1)*stride + k - n, 0) and pad_before = floor(pad_total/2); window cells outside
the image count as 0 for convolutions and are skipped for max pooling.
"""

import numpy as np
import pytest
import torch

from pnasnet.model.ops import Conv2dSame, MaxPool2dSame, SeparableConv2d, tf_same_padding


def _window_starts(n, k, s):
    out = -(-n // s)
    pad_before = max((out - 1) * s + k - n, 0) // 2
    return [i * s - pad_before for i in range(out)]


def reference_conv(x, w, stride, groups=1):
    """x [C,H,W], w [O,C/groups,K,K] -> [O,Ho,Wo], float64 loops."""
    c, h, wd = x.shape
    o, cg, k, _ = w.shape
    rows, cols = _window_starts(h, k, stride), _window_starts(wd, k, stride)
    out = np.zeros((o, len(rows), len(cols)))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i, r0 in enumerate(rows):
            for j, c0 in enumerate(cols):
                total = 0.0
                for ci in range(cg):
                    for a in range(k):
                        for b in range(k):
                            r, cc = r0 + a, c0 + b
                            if 0 <= r < h and 0 <= cc < wd:
                                total += x[g * cg + ci, r, cc] * w[oc, ci, a, b]
                out[oc, i, j] = total
    return out


def reference_max_pool(x, k, stride):
    c, h, wd = x.shape
    rows, cols = _window_starts(h, k, stride), _window_starts(wd, k, stride)
    out = np.full((c, len(rows), len(cols)), -np.inf)
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            r = slice(max(r0, 0), min(r0 + k, h))
            cc = slice(max(c0, 0), min(c0 + k, wd))
            out[:, i, j] = x[:, r, cc].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("n,k,s,expected", [
    (165, 3, 2, (1, 1)), (42, 3, 2, (0, 1)), (42, 5, 2, (1, 2)), (42, 7, 2, (2, 3)),
    (21, 7, 2, (3, 3)), (56, 5, 2, (1, 2)), (14, 7, 2, (2, 3)), (11, 3, 1, (1, 1)),
    (42, 1, 2, (0, 0)), (21, 1, 2, (0, 0)), (2, 7, 2, (2, 3)), (1, 3, 2, (1, 1)),
])
def test_same_padding_table(n, k, s, expected):
    # Values from the architecture spec's padding table, worked out by hand from TF's rule.
    assert tf_same_padding(n, k, s) == expected


@pytest.mark.parametrize("h,w", [(7, 8), (8, 8), (9, 6), (10, 11)])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_same_matches_reference(h, w, k, stride):
    torch.manual_seed(h * 100 + w * 10 + k + stride)
    conv = Conv2dSame(3, 4, k, stride).double()
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    got = conv(x)[0].detach().numpy()
    want = reference_conv(x[0].numpy(), conv.weight.detach().numpy(), stride)
    assert got.shape == want.shape == (4, -(-h // stride), -(-w // stride))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 7)])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_and_separable_match_reference(h, w, k, stride):
    torch.manual_seed(k * 7 + stride)
    sep = SeparableConv2d(3, 5, k, stride).double()
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    depth = reference_conv(x[0].numpy(), sep.depthwise.weight.detach().numpy(), stride, groups=3)
    want = np.einsum("oc,chw->ohw", sep.pointwise.weight.detach().numpy()[:, :, 0, 0], depth)
    got = sep(x)[0].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h,w", [(7, 8), (8, 8), (9, 9), (2, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_same_ignores_padding(h, w, stride):
    # All-negative inputs: a pool that padded with zeros would return 0 at the borders.
    torch.manual_seed(h + w + stride)
    x = -torch.rand(2, 3, h, w, dtype=torch.float64) - 0.5
    got = MaxPool2dSame(3, stride)(x).numpy()
    for b in range(2):
        np.testing.assert_array_equal(got[b], reference_max_pool(x[b].numpy(), 3, stride))
    assert got.max() < 0


def test_asymmetric_padding_is_bottom_right():
    # 4 pixels, 3x3 kernel, stride 2: TF's windows are rows {0,1,2} and {2,3,pad}, so pixel 2 reaches
    # every output; with the extra padding at the top/left (or PyTorch's symmetric padding=1) the
    # windows would be {pad,0,1} and {1,2,3} and pixel 2 would reach only the last output.
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0
    conv = Conv2dSame(1, 1, 3, 2).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(x)[0, 0]
    assert out.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    pooled = MaxPool2dSame(3, 2)(x)[0, 0]
    assert pooled.tolist() == [[1.0, 1.0], [1.0, 1.0]]
