"""Parity with TF-Slim itself: the checkpoint written by TensorFlow for a reduced configuration is read
with this package's reader, and the outputs must equal TensorFlow's (max |error| <= 1e-4 of the
output's scale) in inference mode and in training mode (batch statistics, drop path and dropout off).
The large_tiny fixture has even inputs at stride-2 cells (asymmetric SAME padding) and its
checkpoint carries the aux head and a drop-path global_step; mobile_tiny has Mobile's odd
factorized-reduction split (2 + 3 filters)."""

import numpy as np
import pytest
import torch

from pnasnet.weights import load_weights
from tf_slim_fixtures import (FIXTURES, NAMES, build_fixture_model, fixture_arrays, fixture_config,
                              image_sizes, images_nchw, to_nchw)

TOLERANCE = 1e-4


def assert_matches_tf(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    want_t = to_nchw(want)
    assert tuple(got.shape) == tuple(want_t.shape), what
    scale = float(np.abs(want).max())
    error = (got.detach() - want_t).abs().max().item()
    assert error <= TOLERANCE * scale, f"{what}: max |error| {error:.3g} > {TOLERANCE} x scale {scale:.3g}"


def _endpoint_names(name, size, prefix):
    arrays = fixture_arrays(name)
    return [k[len(prefix) + 1: -len(str(size)) - 1] for k in arrays
            if k.startswith(prefix + "_") and k.endswith(f"_{size}")
            and ("Cell_" in k or "Stem" in k)]


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_matches_tf_slim(name):
    model = build_fixture_model(name, weights=FIXTURES / name / "model.ckpt")
    arrays = fixture_arrays(name)
    checked = 0
    for size in image_sizes(name):
        images = images_nchw(name, size)
        names = _endpoint_names(name, size, "eval") + ["global_pool", "Logits"]
        with torch.inference_mode():
            out = model.forward_endpoints(images, names)
        n = fixture_config(name)["cell_end_points_hold_first_n_images"]
        for endpoint in names:
            key = "eval_logits" if endpoint == "Logits" else f"eval_{endpoint}"
            got = out[endpoint] if endpoint in ("Logits", "global_pool") else out[endpoint][:n]
            assert_matches_tf(got, arrays[f"{key}_{size}"], f"{name} {key} at {size}px")
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_matches_tf_slim(name):
    """Batch statistics, drop path at keep 1 (TF's ramp at step 0) and dropout keep 1."""
    config = fixture_config(name)
    has_aux = bool(config["aux_head"]["built_at_sizes"])
    model = build_fixture_model(name, weights=FIXTURES / name / "model.ckpt", aux_head=has_aux,
                                dropout_keep_prob=1.0)
    model.train()
    model.set_drop_path_progress(0.0)
    arrays = fixture_arrays(name)
    n = config["cell_end_points_hold_first_n_images"]
    for size in image_sizes(name):
        images = images_nchw(name, size)
        with torch.no_grad():
            ends = model.forward_endpoints(images, _endpoint_names(name, size, "train") + ["global_pool"])
            if has_aux and size in config["aux_head"]["built_at_sizes"]:
                logits, aux = model.classify(images, with_aux=True)
                assert_matches_tf(aux, arrays[f"train_aux_logits_{size}"], f"{name} aux logits at {size}px")
            else:
                logits = model.classify(images)
        assert_matches_tf(logits, arrays[f"train_logits_{size}"], f"{name} train logits at {size}px")
        for endpoint, value in ends.items():
            got = value if endpoint == "global_pool" else value[:n]
            assert_matches_tf(got, arrays[f"train_{endpoint}_{size}"], f"{name} train {endpoint} at {size}px")


@pytest.mark.parametrize("name", NAMES)
def test_moving_average_update_matches_tf_slim(name):
    """One training step with TF-Hub v3's decay 0.99 (PyTorch momentum 0.01) moves the moving
    statistics exactly as TF's UPDATE_OPS did (unbiased batch variance)."""
    config = fixture_config(name)["bn_update"]
    model = build_fixture_model(name, weights=FIXTURES / name / "model.ckpt", batch_norm_decay=config["decay"])
    arrays = fixture_arrays(name)
    modules = {key: model.get_submodule(scope.replace("/", ".")) for key, scope in config["scopes"].items()}
    for key, bn in modules.items():
        np.testing.assert_array_equal(bn.running_mean.numpy(), arrays[f"{key}_moving_mean_before"])
    model.train()
    model.set_drop_path_progress(0.0)
    with torch.no_grad():
        model.features(images_nchw(name, int(config["images"].split("_")[1])))
    for key, bn in modules.items():
        for stat, tf_stat in (("running_mean", "moving_mean"), ("running_var", "moving_variance")):
            want = arrays[f"{key}_{tf_stat}_after"]
            np.testing.assert_allclose(getattr(bn, stat).numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                       err_msg=f"{name} {key} {stat}")


def test_checkpoint_extras_are_reported():
    """large_tiny's checkpoint holds a drop-path global_step and the aux head; a model without the
    aux head ignores both, one with it loads the aux weights."""
    model = build_fixture_model("large_tiny")
    report = load_weights(model, FIXTURES / "large_tiny" / "model.ckpt")
    assert "cell_stem_0/comb_iter_0/left/global_step" in report.ignored
    assert any(n.startswith("aux_3/") for n in report.ignored)
    with_aux = build_fixture_model("large_tiny", aux_head=True)
    report = load_weights(with_aux, FIXTURES / "large_tiny" / "model.ckpt")
    assert not report.left_initialised and any(n.startswith("aux_3/") for n in report.loaded)
