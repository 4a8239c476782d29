"""The TF-Slim name rule against the independent variable lists, and the loader's reporting."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pnasnet.model import LARGE, MOBILE, PNASNet, PNASNetConfig
from pnasnet.weights import (WeightsMismatchError, export_tf_slim_variables, load_tf_slim_variables,
                             tf_slim_variables)

DATA = Path(__file__).parent / "data"
TINY = PNASNetConfig("tiny", num_cells=3, num_conv_filters=10, stem_multiplier=0.25, image_size=64,
                     drop_path_keep_prob=1.0)


def read_variable_list(name):
    """``name<TAB>AxBxC`` lines, enumerated for TF-Slim's eval graphs (architecture notes, §6)."""
    table = {}
    for line in (DATA / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            table[key] = tuple(int(d) for d in shape.split("x"))
    return table


@pytest.mark.parametrize("config,listing,count", [
    (LARGE, "tf-slim-pnasnet-large-variables.txt", 1179),
    (MOBILE, "tf-slim-pnasnet-mobile-variables.txt", 933),
])
def test_names_and_shapes_cover_the_tf_slim_graph(config, listing, count):
    expected = read_variable_list(listing)
    model = PNASNet(config)
    shapes = {name: tuple(a.shape) for name, a in export_tf_slim_variables(model).items()}
    assert len(expected) == count
    assert shapes == expected
    # Every state-dict entry except PyTorch's BN step counters has a TF name.
    mapped = set(tf_slim_variables(model))
    assert {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} == mapped


def test_rule_examples():
    table = {k: v.tf_name for k, v in tf_slim_variables(PNASNet(LARGE, aux_head=True)).items()}
    assert table["cell_4.comb_iter_0.left.separable_5x5_1.depthwise.weight"] == \
        "cell_4/comb_iter_0/left/separable_5x5_1/depthwise_weights"
    assert table["cell_0.conv_1x1.weight"] == "cell_0/1x1/weights"
    assert table["cell_stem_0.comb_iter_0.right.bn_1.running_var"] == \
        "cell_stem_0/comb_iter_0/right/bn_1/moving_variance"
    assert table["final_layer.FC.bias"] == "final_layer/FC/biases"
    assert table["aux_7.aux_logits.Conv.weight"] == "aux_7/aux_logits/Conv/weights"
    assert table["cell_stem_1.path2_conv.weight"] == "cell_stem_1/path2_conv/weights"


def _random_tf_variables(model, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(a.shape).astype(np.float32)
            for name, a in export_tf_slim_variables(model).items()}


def test_load_round_trip_and_layouts():
    torch.manual_seed(0)
    model = PNASNet(TINY, num_classes=7)
    variables = _random_tf_variables(model, 1)
    report = load_tf_slim_variables(model, variables)
    assert report.ok and len(report.loaded) == len(variables)
    again = export_tf_slim_variables(model)
    for name, value in variables.items():
        np.testing.assert_array_equal(again[name], value)
    # Layouts checked by hand on three kinds of tensors.
    w = variables["cell_0/1x1/weights"]  # HWIO
    np.testing.assert_array_equal(model.cell_0.conv_1x1.weight[:, :, 0, 0].detach().numpy(), w[0, 0].T)
    d = variables["cell_0/comb_iter_1/left/separable_7x7_1/depthwise_weights"]  # [K,K,C,1]
    torch_d = model.cell_0.comb_iter_1.left.separable_7x7_1.depthwise.weight.detach().numpy()
    np.testing.assert_array_equal(torch_d[3, 0, 1, 5], d[1, 5, 3, 0])
    fc = variables["final_layer/FC/weights"]  # [in, out]
    np.testing.assert_array_equal(model.final_layer.FC.weight.detach().numpy(), fc.T)


def test_extra_training_keys_are_ignored_and_moving_averages_preferred_on_request():
    model = PNASNet(TINY, num_classes=7)
    variables = _random_tf_variables(model, 2)
    variables["global_step"] = np.int64(1000)
    variables["cell_stem_0/comb_iter_0/left/global_step"] = np.int64(5)
    variables["cell_0/1x1/weights/RMSProp"] = variables["cell_0/1x1/weights"] * 0
    ema = variables["conv0/weights"] + 1
    variables["conv0/weights/ExponentialMovingAverage"] = ema
    report = load_tf_slim_variables(model, variables)
    assert report.ok and not report.used_moving_averages
    assert set(report.ignored) == {"global_step", "cell_stem_0/comb_iter_0/left/global_step",
                                   "cell_0/1x1/weights/RMSProp", "conv0/weights/ExponentialMovingAverage"}
    np.testing.assert_array_equal(model.conv0.weight.detach().numpy(),
                                  variables["conv0/weights"].transpose(3, 2, 0, 1))
    report = load_tf_slim_variables(model, variables, prefer_moving_averages=True)
    assert report.used_moving_averages and "conv0/weights" in report.ignored
    np.testing.assert_array_equal(model.conv0.weight.detach().numpy(), ema.transpose(3, 2, 0, 1))


def test_missing_unexpected_and_misshaped_are_named_and_nothing_is_changed():
    model = PNASNet(TINY, num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    variables = _random_tf_variables(model, 3)
    del variables["cell_1/prev_bn/gamma"]
    variables["cell_9/1x1/weights"] = np.zeros((1, 1, 4, 4), np.float32)
    variables["final_layer/FC/weights"] = np.zeros((7, 99), np.float32)
    with pytest.raises(WeightsMismatchError) as error:
        load_tf_slim_variables(model, variables, source_name="model.ckpt")
    message = str(error.value)
    assert "1 missing from model.ckpt: cell_1/prev_bn/gamma" in message
    assert "1 unexpected in model.ckpt: cell_9/1x1/weights" in message
    assert "final_layer/FC/weights: (7, 99) in source, model needs (" in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_aux_head_optional_and_final_layer_ignored_for_feature_vectors():
    with_aux = PNASNet(LARGE, aux_head=True)
    without = PNASNet(LARGE)
    variables = export_tf_slim_variables(without)  # like the released checkpoint: no aux head
    report = load_tf_slim_variables(with_aux, variables)
    assert report.ok and report.left_initialised and all(n.startswith("aux_7/") for n in report.left_initialised)
    # A checkpoint with aux and final layer into a feature-vector model: both ignored.
    full = export_tf_slim_variables(with_aux)
    report = load_tf_slim_variables(PNASNet(LARGE, num_classes=0), full)
    assert report.ok
    assert {n.split("/")[0] for n in report.ignored} == {"aux_7", "final_layer"}


def test_string_rule_agrees_with_module_types():
    """The rule decides batch norm by a 'bn' in the scope name: check that against module types."""
    from torch import nn

    for config in (LARGE, MOBILE):
        model = PNASNet(config, aux_head=True)
        for path, module in model.named_modules():
            if not path or not (module._parameters or module._buffers):
                continue
            is_bn = isinstance(module, nn.BatchNorm2d)
            assert is_bn == ("bn" in path.split(".")[-1]), path
