"""Shapes, sizes, signatures and input checking of the full-size networks."""

import math

import pytest
import torch

import pnasnet
from pnasnet.model import LARGE, MOBILE, PNASNet


@pytest.fixture(scope="module")
def large():
    torch.manual_seed(0)
    return pnasnet.create_model("pnasnet5_large")


@pytest.fixture(scope="module")
def mobile():
    torch.manual_seed(0)
    return pnasnet.create_model("pnasnet5_mobile")


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_exact_parameter_counts(large, mobile):
    # Paper / TF-Slim: 86.1M and 5.1M; exact counts of the TF-Slim eval graphs (1001 classes).
    assert trainable(large) == 86_061_989
    assert trainable(mobile) == 5_065_568
    assert trainable(PNASNet(LARGE, num_classes=0)) == 86_061_989 - (4320 * 1001 + 1001)
    # Aux heads (TF-Slim aux_7 / aux_5 with 1001 classes).
    for config, extra in ((LARGE, 4_586_985), (MOBILE, 2_413_545)):
        with_aux = PNASNet(config, aux_head=True)
        aux = with_aux._modules[f"aux_{config.aux_cell_index()}"]
        assert trainable(aux) == extra


def test_model_attributes(large, mobile):
    assert large.expected_image_size == (331, 331) and mobile.expected_image_size == (224, 224)
    assert (large.num_classes, large.num_features) == (1001, 4320)
    assert (mobile.num_classes, mobile.num_features) == (1001, 1080)
    assert LARGE.reduction_indices() == [4, 8] and MOBILE.reduction_indices() == [3, 6]
    assert not large.training  # create_model returns an inference-mode model


# Spec tables (architecture notes, section 3.5), [C, H] per end point.
LARGE_331 = {"Stem": (540, 42), **{f"Cell_{i}": (1080, 42) for i in range(4)},
             **{f"Cell_{i}": (2160, 21) for i in range(4, 8)},
             **{f"Cell_{i}": (4320, 11) for i in range(8, 12)}}
MOBILE_224 = {"Stem": (135, 28), **{f"Cell_{i}": (270, 28) for i in range(3)},
              **{f"Cell_{i}": (540, 14) for i in range(3, 6)},
              **{f"Cell_{i}": (1080, 7) for i in range(6, 9)}}


def _expected_sides(n, config):
    """TF arithmetic: conv0 3x3/2 VALID, then SAME stride 2 (ceil) at both stem cells and at each
    reduction cell."""
    side = math.ceil(math.ceil(((n - 3) // 2 + 1) / 2) / 2)
    sides = {"Stem": side}
    for i in range(config.num_cells):
        if i in config.reduction_indices():
            side = math.ceil(side / 2)
        sides[f"Cell_{i}"] = side
    return sides


@torch.inference_mode()
def test_endpoint_shapes_at_native_size(large, mobile):
    for model, size, table in ((large, 331, LARGE_331), (mobile, 224, MOBILE_224)):
        out = model.forward_endpoints(torch.rand(1, 3, size, size), model.endpoint_names)
        for name, (channels, side) in table.items():
            assert tuple(out[name].shape) == (1, channels, side, side), name
        assert tuple(out["global_pool"].shape) == (1, model.num_features)
        assert tuple(out["Logits"].shape) == (1, 1001)


@torch.inference_mode()
@pytest.mark.parametrize("size", [299, 330, 256, 225])
def test_endpoint_shapes_at_other_sizes(large, mobile, size):
    for model, config in ((large, LARGE), (mobile, MOBILE)):
        out = model.forward_endpoints(torch.rand(1, 3, size, size + 3), model.endpoint_names[:-2])
        rows, cols = _expected_sides(size, config), _expected_sides(size + 3, config)
        for name, tensor in out.items():
            assert tuple(tensor.shape[-2:]) == (rows[name], cols[name]), (config.name, size, name)


@torch.inference_mode()
def test_smallest_size_and_clear_error_below_it(mobile):
    smallest = mobile.min_image_size
    assert smallest == 19  # 19 -> conv0 9 -> 5 -> 3 -> 2 -> 1: every stride-2 input has 2+ pixels
    assert tuple(mobile.features(torch.rand(1, 3, smallest, smallest)).shape) == (1, 1080)
    with pytest.raises(ValueError, match=r"at least 19x19 pixels, got 18x40"):
        mobile.features(torch.rand(1, 3, 18, 40))


@torch.inference_mode()
def test_signatures_and_feature_vector_variant(mobile):
    torch.manual_seed(1)
    fv = pnasnet.create_model("pnasnet5_mobile_feature_vector")
    fv.load_state_dict({k: v for k, v in mobile.state_dict().items() if not k.startswith("final_layer")})
    x = torch.rand(2, 3, 224, 224)
    feats = mobile.features(x)
    assert tuple(feats.shape) == (2, 1080) and feats.min() >= 0  # ReLU before the mean
    torch.testing.assert_close(fv(x), feats)
    torch.testing.assert_close(fv.features(x), feats)
    assert fv.num_classes == 0 and not hasattr(fv.final_layer.FC, "weight")
    with pytest.raises(RuntimeError, match="feature-vector model"):
        fv.classify(x)
    logits = mobile.classify(x)
    expected = feats @ mobile.final_layer.FC.weight.T + mobile.final_layer.FC.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mobile(x), logits)


@torch.inference_mode()
def test_endpoints_compute_no_further_than_asked(mobile):
    calls = []
    hooks = [mobile._modules[name].register_forward_hook(lambda m, i, o, n=name: calls.append(n))
             for name in mobile.cell_names]
    fc_hook = mobile.final_layer.register_forward_hook(lambda m, i, o: calls.append("final_layer"))
    try:
        out = mobile.forward_endpoints(torch.rand(1, 3, 64, 64), ["Cell_1", "Stem"])
    finally:
        for h in hooks + [fc_hook]:
            h.remove()
    assert set(out) == {"Stem", "Cell_1"}
    assert calls == ["cell_stem_0", "cell_stem_1", "cell_0", "cell_1"]
    with pytest.raises(ValueError, match="unknown end point"):
        mobile.forward_endpoints(torch.rand(1, 3, 64, 64), ["Cell_9"])


@pytest.mark.parametrize("bad,error,match", [
    (torch.rand(3, 224, 224), ValueError, r"shape \[N,3,H,W\]"),
    (torch.rand(1, 224, 224, 3), ValueError, "channels last"),
    (torch.rand(1, 1, 224, 224), ValueError, "3 channels"),
    ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), TypeError, "uint8"),
    (torch.rand(1, 3, 64, 64) * 255, ValueError, r"values in \[0, 1\].*255"),
    (torch.rand(1, 3, 64, 64) * 2 - 1, ValueError, r"\[-1, 1\]"),
    ([[0.5]], TypeError, "torch.Tensor"),
])
def test_bad_inputs_get_clear_errors(mobile, bad, error, match):
    with pytest.raises(error, match=match):
        mobile.classify(bad)


@torch.inference_mode()
def test_range_check_can_be_turned_off_and_float64_is_accepted():
    model = PNASNet(MOBILE).eval()
    model.check_input_range = False
    assert model.classify(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 1001)
    model.check_input_range = True
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model.classify(x), model.classify(x.float()))


@torch.inference_mode()
def test_eval_is_deterministic_and_batch_size_invariant(mobile):
    torch.manual_seed(3)
    x = torch.rand(8, 3, 224, 224)
    batch = mobile.classify(x)
    torch.testing.assert_close(mobile.classify(x), batch, rtol=0, atol=0)
    for i in (0, 5):
        single = mobile.classify(x[i : i + 1])
        torch.testing.assert_close(single[0], batch[i], rtol=1e-4, atol=1e-4 * batch.abs().max().item())


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'pnasnet5_huge'.*pnasnet5_large"):
        pnasnet.create_model("pnasnet5_huge")
