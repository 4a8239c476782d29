"""The inference form (batch norms folded into the convolutions, channels-last) and the lean eager
forward computes the plain model's function: Large and Mobile at several sizes, Mobile at its native
size, and TF-Slim's own fixture weights (where TF's outputs are known too)."""

import copy

import pytest
import torch
from torch import nn

import pnasnet
from pnasnet.inference import fold_batch_norms, optimize, to_channels_last
from pnasnet.inference.fold import InferenceOnlyError
from pnasnet.inference.fused import FusedForward, _max_pool_3x3_s1
from pnasnet.model import LARGE, MOBILE, PNASNet
from tf_slim_fixtures import fixture_arrays, images_nchw, image_sizes

FIXTURE_CKPT = "tests/fixtures/tf_slim/{}/model.ckpt"
TOLERANCE = 1e-5  # relative to the largest magnitude; the fold rounds once in float64 -> float32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def with_random_bn_stats(model: PNASNet, seed: int) -> PNASNet:
    """Non-trivial batch-norm statistics (fresh ones are the identity map), near unit scale."""
    g = torch.Generator().manual_seed(seed)
    for bn in model.batch_norms():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def large():
    torch.manual_seed(0)
    return with_random_bn_stats(PNASNet(LARGE).eval(), 1)


@pytest.fixture(scope="module")
def mobile():
    torch.manual_seed(0)
    return with_random_bn_stats(PNASNet(MOBILE).eval(), 2)


def check_all_forms(model: PNASNet, images: torch.Tensor) -> None:
    with torch.inference_mode():
        logits, feats = model.classify(images), model.features(images)
        folded = fold_batch_norms(model)
        assert rel(folded.classify(to_channels_last(images)), logits) <= TOLERANCE
        assert rel(folded.features(images), feats) <= TOLERANCE  # NCHW input works too
        fast = optimize(model)  # folded + the lean forward (shared ReLUs, fused post-ops, packed weights)
        assert rel(fast.classify(images), logits) <= TOLERANCE
        assert rel(fast.features(images), feats) <= TOLERANCE
        assert rel(fast.classify(images), logits) <= TOLERANCE  # again, after the weights were packed


# Odd and even sides exercise TF's asymmetric SAME padding (stride-2 depthwise convolutions and max
# pools) and both branches of the factorized reduction (odd sides get a zero row/column).
@pytest.mark.parametrize("size", [64, 67, (63, 70)])
def test_large_folded_equals_plain(large, size, one_model_thread):
    h, w = size if isinstance(size, tuple) else (size, size)
    check_all_forms(large, torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h + w)))


@pytest.mark.parametrize("size", [64, 91, (72, 65)])
def test_mobile_folded_equals_plain(mobile, size, one_model_thread):
    h, w = size if isinstance(size, tuple) else (size, size)
    check_all_forms(mobile, torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w)))


def test_mobile_native_size(mobile, one_model_thread):
    check_all_forms(mobile, torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(224)))


def test_smallest_size(mobile, one_model_thread):
    size = mobile.min_image_size
    check_all_forms(mobile, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)))


@pytest.mark.parametrize("name", ["mobile_tiny", "large_tiny"])
def test_fixture_weights(name, one_model_thread):
    """TF-Slim's own checkpoints (reduced configurations, activations near unit scale): every form
    equals the plain model, and TF's own outputs."""
    model = pnasnet.create_model("auto", weights=FIXTURE_CKPT.format(name))
    for size in image_sizes(name, aux_only=False):
        images = images_nchw(name, size)
        check_all_forms(model, images)
        tf_logits = torch.from_numpy(fixture_arrays(name)[f"eval_logits_{size}"])
        with torch.inference_mode():
            assert rel(optimize(model).classify(images), tf_logits) <= 1e-4


def test_batch_of_one_equals_row_of_batch(mobile, one_model_thread):
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    fast = optimize(mobile)
    with torch.inference_mode():
        batch = fast.features(images)
        for i in range(3):
            assert rel(fast.features(images[i:i + 1]), batch[i:i + 1]) <= TOLERANCE


def test_training_form_untouched(mobile):
    before = {k: v.clone() for k, v in mobile.state_dict().items()}
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in mobile.modules())
    folded = fold_batch_norms(mobile)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in mobile.modules()) == batch_norms > 0
    after = mobile.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.bias is None for m in mobile.modules() if isinstance(m, nn.Conv2d))
    assert all(p.requires_grad for p in mobile.parameters())
    assert not any(p.requires_grad for p in folded.parameters())
    # Every convolution followed by a batch norm (all but the depthwise halves of the separable
    # convolutions, whose norm folds into the pointwise half) got that norm's shift as its bias.
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all((m.bias is None) == (m.groups > 1) for m in convs)
    assert folded.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(InferenceOnlyError):
        folded.train()
    folded.eval()  # allowed
    assert fold_batch_norms(folded) is folded  # already folded
    clone = copy.deepcopy(folded)
    x = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        assert torch.equal(clone.features(x), folded.features(x))


def test_factorized_reduction_bn_folds_into_both_paths(mobile):
    folded = fold_batch_norms(mobile)
    cell, plain = folded.cell_stem_1, mobile.cell_stem_1
    assert cell.prev_mode == "factorized" and isinstance(cell.final_path_bn, nn.Identity)
    bn = plain.final_path_bn
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    c1 = plain.path1_conv.out_channels
    assert torch.allclose(cell.path1_conv.bias.double(), shift[:c1].float().double())
    assert torch.allclose(cell.path2_conv.bias.double(), shift[c1:].float().double())
    assert torch.allclose(cell.path2_conv.weight.double(),
                          (plain.path2_conv.weight.double() * scale[c1:].view(-1, 1, 1, 1)).float().double())


def test_endpoints_of_the_folded_model(mobile, one_model_thread):
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(9))
    folded = fold_batch_norms(mobile)
    with torch.inference_mode():
        want = mobile.forward_endpoints(images, ["Stem", "Cell_4"])
        got = folded.forward_endpoints(to_channels_last(images), ["Stem", "Cell_4"])
    for name in want:
        assert rel(got[name], want[name]) <= TOLERANCE


def test_aux_head_folds(one_model_thread):
    model = with_random_bn_stats(PNASNet(MOBILE, aux_head=True).eval(), 3)
    folded = fold_batch_norms(model)
    head = folded.aux_5.aux_logits
    assert isinstance(head.aux_bn0, nn.Identity) and isinstance(head.aux_bn1, nn.Identity)


def test_fused_needs_the_folded_form(mobile):
    with pytest.raises(ValueError, match="inference form"):
        FusedForward(mobile)


@pytest.mark.parametrize("shape", [(1, 5, 7, 9), (2, 3, 2, 2), (1, 4, 11, 3)])
def test_max_pool_3x3_same(shape):
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_max_pool_3x3_s1(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))


def test_optimized_model_keeps_the_model_face(mobile):
    fast = optimize(mobile)
    assert (fast.num_classes, fast.num_features, fast.expected_image_size) == (1001, 1080, (224, 224))
    assert fast.min_image_size == mobile.min_image_size and fast.config is mobile.config
    assert not fast.training
    with pytest.raises(RuntimeError, match="cannot train"):
        fast.train()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fast.classify(torch.full((1, 3, 64, 64), 255.0))
    with pytest.raises(ValueError, match="at least"):
        fast.classify(torch.rand(1, 3, 10, 10))
    out = fast(torch.rand(2, 3, 48, 48))
    assert out.shape == (2, 1001) and out.dtype == torch.float32
