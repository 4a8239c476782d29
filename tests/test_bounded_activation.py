"""``bounded_activation=True`` (TF-Slim's ``use_bounded_activation``): ReLU6 everywhere, branch outputs
clipped to [-6, 6], ReLU6 after each block's sum.

TF parity itself is in ``test_tf_slim_parity.py`` (the ``mobile_tiny_bounded`` fixture, made by
TF-Slim with ``use_bounded_activation=True`` and weights scaled so that the ReLU6s and clips cut a
few percent of the values). Here: the fixture really exercises the bounds, and every other path
computes the same function: the inference form (folded, and the fused forward with and without
oneDNN post-ops), ONNX Runtime, the weights file and ``create_model``; the default stays plain ReLU."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.data import load_images
from pnasnet.inference import fold_batch_norms, optimize, to_channels_last
from pnasnet.inference.fused import FusedForward
from pnasnet.model import LARGE, MOBILE, PNASNet
from pnasnet.weights.ours import read_metadata, save_safetensors
from test_inference_form import rel, with_random_bn_stats
from tf_slim_fixtures import FIXTURES, build_fixture_model, fixture_arrays, fixture_config, image_sizes, images_nchw

NAME = "mobile_tiny_bounded"
CKPT = FIXTURES / NAME / "model.ckpt"
TOLERANCE = 1e-4  # relative to the largest magnitude, as the other inference-form checks


@pytest.fixture(scope="module")
def model():
    return build_fixture_model(NAME, weights=CKPT)


def test_fixture_is_bounded_and_exercises_the_bounds(model):
    config = fixture_config(NAME)
    assert config["hparams_eval_graph"]["use_bounded_activation"] is True
    assert model.bounded_activation and model.config.use_bounded_activation
    report = config["bounded_activation"][f"eval_{image_sizes(NAME)[0]}"]
    assert report["all ReLU6 and clips: fraction of elements cut at +-6"] > 0.01
    clips = report["clip_by_value(-6, 6) of branch outputs"]
    assert clips["fraction_above_6"] > 0.005 and clips["fraction_below_-6"] > 0.005
    assert report["relu6 after the block add (combine)"]["fraction_above_6"] > 0.05
    assert report["relu6 inside branches (separable convs, max pools, none)"]["fraction_above_6"] > 0.005


def test_same_weights_with_plain_relu_compute_something_else(model, one_model_thread):
    """The bounds matter for these weights: plain ReLU is far from TF's bounded outputs, and a
    bounded cell's outputs lie in [0, 6]."""
    size = image_sizes(NAME)[0]
    images = images_nchw(NAME, size)
    plain = build_fixture_model(NAME, weights=CKPT, bounded_activation=False)
    assert not plain.bounded_activation
    want = torch.from_numpy(fixture_arrays(NAME)[f"eval_logits_{size}"])
    with torch.inference_mode():
        assert rel(model.classify(images), want) <= TOLERANCE
        assert rel(plain.classify(images), want) > 0.05
        cells = model.forward_endpoints(images, ["Stem", "Cell_0"])
    for value in cells.values():
        assert float(value.min()) >= 0.0 and float(value.max()) <= 6.0


def test_default_is_plain_relu():
    for config in (LARGE, MOBILE):
        assert config.use_bounded_activation is False
    assert not PNASNet(MOBILE).bounded_activation
    assert not pnasnet.create_model("pnasnet5_mobile").bounded_activation
    assert pnasnet.create_model("pnasnet5_mobile", bounded_activation=True).config.use_bounded_activation


def check_inference_forms(model: PNASNet, images: torch.Tensor) -> None:
    """Folded and fused forms (oneDNN post-ops where available, and the plain-PyTorch fallback)
    equal the plain model."""
    with torch.inference_mode():
        logits, feats = model.classify(images), model.features(images)
        folded = fold_batch_norms(model)
        assert rel(folded.classify(to_channels_last(images)), logits) <= TOLERANCE
        fast = optimize(model)
        assert rel(fast.classify(images), logits) <= TOLERANCE
        assert rel(fast.features(images), feats) <= TOLERANCE
        assert rel(fast.classify(images), logits) <= TOLERANCE  # after the weights were packed
        unfused = FusedForward(folded, use_mkldnn=False)
        assert rel(unfused.pooled(images), feats) <= TOLERANCE
        fused = FusedForward(folded)
        if fused.fused:  # oneDNN's post-ops (hardtanh) where this CPU has them
            assert rel(fused.pooled(images), feats) <= TOLERANCE


@pytest.mark.cpu_dependent  # oneDNN's fused post-ops, or the plain fallback where the CPU lacks them
@pytest.mark.parametrize("size", [48, 51])
def test_inference_form_on_the_tf_fixture(model, size, one_model_thread):
    images = images_nchw(NAME, size)
    check_inference_forms(model, images)
    want = torch.from_numpy(fixture_arrays(NAME)[f"eval_logits_{size}"])
    with torch.inference_mode():
        assert rel(optimize(model).classify(images), want) <= TOLERANCE


@pytest.mark.parametrize("config, size", [(MOBILE, 64), (MOBILE, (72, 65)), (LARGE, 67)])
def test_inference_form_full_structure(config, size, one_model_thread):
    """Large and Mobile structure (odd filter split, asymmetric padding, stride-2 'none' branches)."""
    torch.manual_seed(0)
    # Batch-norm statistics not fitted to the activations: large values, many cut by the bounds.
    model = with_random_bn_stats(PNASNet(config, bounded_activation=True).eval(), 7)
    h, w = size if isinstance(size, tuple) else (size, size)
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.inference_mode():
        last = model.forward_endpoints(images, ["Cell_5"])["Cell_5"]
    assert float((last == 6.0).float().mean()) > 0.05  # block sums cut at 6
    check_inference_forms(model, images)


def test_training_mode_runs_and_trains(one_model_thread):
    """Training mode (batch statistics, drop path) with ReLU6 and clips: finite, and gradients
    reach the first convolution."""
    model = build_fixture_model(NAME, weights=CKPT, aux_head=True, drop_path_keep_prob=0.7)
    model.train()
    images = images_nchw(NAME, 72)
    logits, aux = model.classify(images, with_aux=True)
    (logits.square().mean() + aux.square().mean()).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(aux).all()
    assert model.conv0.weight.grad is not None and model.conv0.weight.grad.abs().sum() > 0


def test_weights_file_and_create_model_keep_it(model, tmp_path, one_model_thread):
    """Our .safetensors records the setting; "auto", a variant name and a model directory rebuild it."""
    path = save_safetensors(model, tmp_path / "bounded.safetensors", {"source": "test"})
    assert json.loads(read_metadata(path)["config"])["use_bounded_activation"] is True
    images = images_nchw(NAME, 48)
    with torch.inference_mode():
        want = model.classify(images)
        again = pnasnet.create_model("auto", weights=path)
        assert again.bounded_activation and torch.equal(again.classify(images), want)
        folder = tmp_path / "model_dir"
        folder.mkdir()
        save_safetensors(model, folder / "model.safetensors", {"source": "test"})
        assert pnasnet.create_model(str(folder)).bounded_activation
        # A TF checkpoint does not record it: the caller says so.
        from_tf = pnasnet.create_model("auto", weights=CKPT, bounded_activation=True)
        assert torch.equal(from_tf.classify(images), want)
        assert not pnasnet.create_model("auto", weights=CKPT).bounded_activation
    plain = save_safetensors(PNASNet(MOBILE, num_classes=0), tmp_path / "plain.safetensors", {})
    assert not pnasnet.create_model("pnasnet5_mobile_feature_vector", weights=plain).bounded_activation
    bounded = save_safetensors(PNASNet(MOBILE, num_classes=0, bounded_activation=True),
                               tmp_path / "mobile_bounded.safetensors", {})
    assert pnasnet.create_model("pnasnet5_mobile_feature_vector", weights=bounded).bounded_activation


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("onnx", "onnxscript", "onnxruntime")),
                    reason="onnx, onnxscript and onnxruntime are needed")
def test_onnx_export_runs_in_onnxruntime(model, tmp_path, one_model_thread):
    import onnxruntime as ort

    from pnasnet.inference import export_onnx
    from pnasnet.inference.onnx_export import onnx_model_info

    size = 51
    path = export_onnx(model, tmp_path / "bounded.onnx", image_size=size)
    assert "Clip" in onnx_model_info(path)["ops"]  # ReLU6 and the [-6, 6] clips
    images = images_nchw(NAME, size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats, logits = session.run(["features", "logits"], {"images": images.numpy()})
    want = torch.from_numpy(fixture_arrays(NAME)[f"eval_logits_{size}"])
    with torch.inference_mode():
        assert rel(torch.from_numpy(logits), model.classify(images)) <= TOLERANCE
        assert rel(torch.from_numpy(feats), model.features(images)) <= TOLERANCE
    assert rel(torch.from_numpy(logits), want) <= TOLERANCE


def test_command_line_flag(capsys, one_model_thread):
    from pnasnet.cli.main import build_parser, main

    parser = build_parser()
    for command in (["classify"], ["features", "--out", "f.parquet"]):
        assert parser.parse_args([*command, "x.jpg"]).bounded_activation is None  # the weights' own setting
        assert parser.parse_args([*command, "x.jpg", "--bounded-activation"]).bounded_activation is True
    assert main(["info", "auto", "--weights", str(CKPT), "--bounded-activation", "--image-size", "48"]) == 0
    assert json.loads(capsys.readouterr().out)["bounded_activation"] is True
    assert main(["info", "pnasnet5_mobile", "--image-size", "48"]) == 0
    assert json.loads(capsys.readouterr().out)["bounded_activation"] is False
    from pnasnet.cli.inference import _load_model

    args = parser.parse_args(["classify", "x.jpg", "--model", "auto", "--weights", str(CKPT), "--bounded-activation",
                              "--device", "cpu", "-q"])
    assert _load_model(args)[0].bounded_activation


def test_serve_and_train_build_the_bounded_form(tmp_path, one_model_thread):
    """``serve`` and ``train`` take the flag too; head mode's feature cache never hands the vectors
    of the ReLU form to the bounded one (same parameters, another function)."""
    from PIL import Image

    from pnasnet.cli.main import build_parser
    from pnasnet.serve.settings import ServeSettings, load_model
    from pnasnet.training.feature_cache import cached_features
    from pnasnet.training.models import load_backbone

    parser = build_parser()
    assert parser.parse_args(["serve", "--bounded-activation"]).bounded_activation is True
    assert parser.parse_args(["train", "d", "--out", "o", "--bounded-activation"]).bounded_activation is True
    assert parser.parse_args(["train", "d", "--out", "o"]).bounded_activation is None
    served = load_model(ServeSettings(model="auto", weights=str(CKPT), bounded_activation=True))
    assert served.bounded_activation
    assert not load_model(ServeSettings(model="auto", weights=str(CKPT))).bounded_activation
    bounded = load_backbone("auto", CKPT, bounded_activation=True)
    relu = load_backbone("auto", CKPT)
    assert bounded.bounded_activation and not relu.bounded_activation and bounded.num_classes == 0
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(photo)
    cache = tmp_path / "cache"
    first = cached_features(relu, [str(photo)], cache_dir=cache, image_size=48, workers=0)
    second = cached_features(bounded, [str(photo)], cache_dir=cache, image_size=48, workers=0)
    assert first.computed == 1 and second.computed == 1  # not served from the ReLU form's cache
    with torch.inference_mode():
        want = bounded.features(load_images([str(photo)], 48))[0].numpy()
    assert np.abs(second.vectors[str(photo)] - want).max() <= 1e-4 * np.abs(want).max()


def test_weights_convert_records_bounded_activation_for_a_tf_checkpoint(tmp_path, capsys):
    """A TF checkpoint cannot say it was trained bounded (a graph option, not a variable): `weights
    convert --bounded-activation` records it in the .safetensors, and every later load builds the
    bounded network from that file: TF's own logits (the fixture's reference), not plain ReLU's."""
    from pnasnet.cli import main

    size = image_sizes(NAME)[0]
    images = images_nchw(NAME, size)
    want = torch.from_numpy(fixture_arrays(NAME)[f"eval_logits_{size}"])
    bounded, plain = tmp_path / "bounded.safetensors", tmp_path / "plain.safetensors"
    assert main(["weights", "convert", str(CKPT), "--out", str(bounded), "--bounded-activation"]) == 0
    assert main(["weights", "convert", str(CKPT), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert json.loads(read_metadata(bounded)["config"])["use_bounded_activation"] is True
    assert json.loads(read_metadata(plain)["config"])["use_bounded_activation"] is False
    loaded = pnasnet.create_model("auto", weights=bounded)
    assert loaded.bounded_activation
    with torch.inference_mode():
        assert rel(loaded.classify(images), want) <= TOLERANCE
        assert rel(pnasnet.create_model("auto", weights=plain).classify(images), want) > 0.05


def test_a_features_output_never_mixes_bounded_and_relu_vectors(model, tmp_path):
    """Same parameters, another function: a run with the other activation cannot resume into an
    output (the parameters' SHA-256 alone would let it)."""
    from PIL import Image

    from pnasnet.tasks import OutputMismatchError, extract_features

    size = image_sizes(NAME)[0]
    paths = []
    for i, image in enumerate(images_nchw(NAME, size)[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(paths[-1])
    out = tmp_path / "f.parquet"
    extract_features(model, paths[:1], out, image_size=size, workers=0)
    plain = build_fixture_model(NAME, weights=CKPT, bounded_activation=False)
    with pytest.raises(OutputMismatchError, match="bounded_activation: True there, False now"):
        extract_features(plain, paths, out, image_size=size, workers=0)
    summary = extract_features(model, paths, out, image_size=size, workers=0)  # the same function resumes
    assert summary.computed == 1
