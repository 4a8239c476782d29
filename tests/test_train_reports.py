"""Training reports with the field's tools: matplotlib learning curves (and the numbers alone without
matplotlib), TensorBoard scalars read back with TensorBoard's own reader (resumed runs included),
the best epoch kept (``keep="best"``), balanced class weights in the loss, make_image_classifier's
rotation / shift / zoom augmentation, and the model card (``README.md``)."""

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.training import SilentReporter, TrainOptions, scan_image_folder, split_train_validation, train
from pnasnet.training.augment import GeometricAugmentation, TrainingTransform
from pnasnet.training.checkpoint import BEST_FILE_PATTERN, CHECKPOINT_FILE, load_checkpoint
from pnasnet.training.finetune import FineTuner
from pnasnet.training.loader import epoch_batches
from pnasnet.training.models import build_classifier
from pnasnet.training.objective import class_weights, classification_loss
from pnasnet.training.report import EpochRecord, best_epoch, learning_curves_figure, matplotlib_available

from tensorboard_events import assert_tensorboard_equals_metrics, read_scalars
from train_images import make_texture_folder

FIXTURE = Path(__file__).parent / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"
HELPER = Path(__file__).parent / "train_interrupt_helper.py"
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_model_thread")]


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """brick 16, grass 16, gravel 5 tiles of 48 px."""
    root = make_texture_folder(tmp_path_factory.mktemp("imbalanced") / "images", grid=4, tile_size=48)
    for extra in sorted((root / "gravel").iterdir())[5:]:
        extra.unlink()
    return root


# ------------------------------------------------------------------------------------------ head mode
def test_head_mode_reports_best_epoch_class_weights_tensorboard_and_card(imbalanced, tmp_path, capsys):
    from pnasnet.cli import main

    pytest.importorskip("tensorboard")  # the train extra
    out, logs = tmp_path / "model", tmp_path / "logs"
    assert main(["train", str(imbalanced), "--out", str(out), "--model", "auto", "--weights", str(FIXTURE),
                 "--image-size", "48", "--epochs", "8", "--batch-size", "8", "--workers", "0", "--cache-dir",
                 str(tmp_path / "cache"), "--keep", "best", "--class-weight", "balanced", "--tensorboard", str(logs),
                 "-q"]) == 0
    err = capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())

    # class weights: n_samples / (n_classes * n_c) over the training images, in config.json
    train_counts = [row["train"] for row in config["data"]["class_balance"]]
    expected = [sum(train_counts) / (3 * n) for n in train_counts]
    assert list(config["class_weights"].values()) == pytest.approx(expected)
    assert config["training"]["class_weight"] == "balanced" and expected[2] > 2 * expected[0]
    labels = np.repeat(np.arange(3), train_counts)  # (scikit-learn's compute_class_weight("balanced") formula)
    # ... and in the loss: the new layer starts at zero, so the first step's loss is log(3) times the
    # mean weight of its batch's images (1 without weights)
    first_batch = epoch_batches(sum(train_counts), 8, 0, 0)[0]
    batch_weights = [expected[int(labels[i])] for i in first_batch]
    first_loss = read_scalars(logs)[("train_steps", "batch_loss")][0]
    assert first_loss == (1, pytest.approx(math.log(3) * np.mean(batch_weights), rel=1e-5))
    assert "class weights (balanced): brick 0.6" in err
    assert np.mean(batch_weights) != pytest.approx(1.0)

    # the best epoch by validation accuracy is kept, and it is what was evaluated
    history = [EpochRecord(**e) for e in metrics["epochs"]]
    best = max(history, key=lambda r: (r.val_accuracy, -r.val_loss, -r.epoch))
    assert metrics["kept"]["keep"] == "best" and metrics["kept"]["epoch"] == best.epoch
    assert f"kept epoch {best.epoch} of 8 (best validation accuracy" in err
    assert metrics["final"]["accuracy"] == pytest.approx(best.val_accuracy)

    assert_tensorboard_equals_metrics(logs, metrics, steps=8 * (sum(train_counts) // 8))

    card = (out / "README.md").read_text()
    for text in ("# model: 3-class image classifier", "| 2 | gravel | 4 | 1 | 2.", "## Metrics",
                 f"the weights of epoch {best.epoch} of 8, the best by validation accuracy",
                 "| class | precision | recall | F1 | images |",
                 f"pnasnet.create_model({str(out)!r})", f"pnasnet classify --model {out} photo.jpg",
                 # the command as typed (CLI-only flags such as --workers included), not one rebuilt from settings
                 "--keep best --class-weight balanced --tensorboard", "--workers 0 --cache-dir"):
        assert text in card, text
    assert "it trains the same model" not in card  # that note is for runs started from Python
    assert ("![learning curves](curves.png)" in card) == matplotlib_available()
    assert not list(out.glob("*.tmp"))
    model = pnasnet.create_model(str(out))
    assert model.labels == ["brick", "grass", "gravel"]


def test_without_matplotlib_the_numbers_alone_are_written(imbalanced, tmp_path, monkeypatch, capsys):
    from pnasnet.cli import main

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib -> ImportError
    out = tmp_path / "model"
    code = main(["train", str(imbalanced), "--out", str(out), "--model", "auto", "--weights", str(FIXTURE),
                 "--image-size", "48", "--epochs", "2", "--workers", "0", "--cache-dir", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("matplotlib is not installed") == 1 and "pnasnet[train]" in err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "labels.txt", "metrics.json",
                                                     "model.safetensors"]
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2
    assert "curves.png" not in (out / "README.md").read_text()


def test_tensorboard_without_the_package_is_a_clear_error(imbalanced, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"--tensorboard needs the tensorboard package.*pnasnet\[train\]"):
        train(imbalanced, tmp_path / "model", model="auto", weights=str(FIXTURE), tensorboard=str(tmp_path / "logs"),
              reporter=SilentReporter())
    assert not (tmp_path / "model").exists()


def test_learning_curves_have_integer_epoch_ticks_and_mark_the_kept_epoch():
    pytest.importorskip("matplotlib")
    history = [EpochRecord(i, 1.0 / i, 0.5 + 0.05 * i, 1.2 / i if i != 3 else None, 0.4 + 0.05 * i)
               for i in range(1, 8)]
    figure = learning_curves_figure(history, title="t", kept=5)
    figure.canvas.draw()
    for axes in figure.axes:
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
        assert any("kept (epoch 5)" in text.get_text() for text in axes.get_legend().get_texts())
    assert figure.axes[1].get_ylim() == pytest.approx((-0.02, 1.02))


# ------------------------------------------------------------------------------------------ full mode
def _full_settings(logs: Path) -> dict:
    return dict(model="auto", weights=str(FIXTURE), mode="full", image_size=48, epochs=3, batch_size=6,
                learning_rate=0.02, dropout_rate=0.3, keep="best", tensorboard=str(logs), augment="flip",
                rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.2)


def test_full_mode_ctrl_c_resume_continues_the_tensorboard_run_and_keeps_the_best_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    images = make_texture_folder(tmp_path / "images", grid=3, tile_size=64)  # 27 images
    out, logs, marker = tmp_path / "model", tmp_path / "logs", tmp_path / "marker"
    settings = _full_settings(logs)
    proc = subprocess.Popen([sys.executable, str(HELPER), str(images), str(out), json.dumps(settings | {"workers": 1}),
                             "ctrl-c", "2", "2", str(marker)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.communicate(timeout=180)[0].decode()
    assert proc.returncode == 130, output[-2000:]
    saved = load_checkpoint(out / CHECKPOINT_FILE)
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert [p.name for p in out.glob(BEST_FILE_PATTERN)] == ["training-best-epoch-1.pt"]  # the only epoch so far
    folder = scan_image_folder(images)
    steps = len(epoch_batches(len(split_train_validation(folder.images, folder.classes, 0.2).train), 6, 0, 0))
    before = read_scalars(logs)  # the interrupted run's: up to its checkpoint (step 2 of epoch 2)
    assert [s for s, _ in before[("train_steps", "batch_loss")]] == list(range(1, steps + 3))
    time.sleep(1.0)  # event files are ordered by their names' second

    result = train(images, out, workers=0, reporter=SilentReporter(), **settings)
    assert result.resumed
    metrics = json.loads((out / "metrics.json").read_text())
    assert_tensorboard_equals_metrics(logs, metrics, steps=3 * steps)
    history = [EpochRecord(**e) for e in metrics["epochs"]]
    assert metrics["kept"]["epoch"] == best_epoch(history).epoch == result.kept_epoch
    assert metrics["final"]["accuracy"] == pytest.approx(best_epoch(history).val_accuracy)
    assert not list(out.glob(BEST_FILE_PATTERN)) and not (out / CHECKPOINT_FILE).exists()
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["rotation_range"] == 40 and config["training"]["keep"] == "best"
    assert "rotation ±40°, width shift ±0.2, height shift ±0.2, zoom ±0.2" in (out / "README.md").read_text()


def test_full_mode_class_weights_in_the_loss_and_gradient_accumulation(tmp_path):
    from pnasnet.data import load_images

    root = make_texture_folder(tmp_path / "images", grid=2, tile_size=48)
    paths = sorted(root.glob("*/*"))
    x = load_images(paths, 48)
    y = torch.tensor([["brick", "grass", "gravel"].index(p.parent.name) for p in paths])
    weights = [0.5, 1.0, 2.0]
    backbone = pnasnet.create_model("auto", weights=FIXTURE, num_classes=0)
    base = build_classifier(backbone, 3, image_size=48, dropout_rate=0.0)
    states = []
    for steps in (1, 3):
        model = copy.deepcopy(base)
        options = TrainOptions(mode="full", dropout_rate=0.0, batch_size=12, accumulation_steps=steps,
                               freeze_batch_norm="on", learning_rate=0.05, class_weight="balanced")
        tuner = FineTuner(model, options, total_steps=2, device=torch.device("cpu"), class_weights=weights)
        tuner.train_mode()
        loss_sum, _ = tuner.step(x, y, 0)
        # zero-initialised final layer: each image's loss is log(3), times its class's weight
        assert loss_sum == pytest.approx(math.log(3) * sum(weights[int(k)] for k in y), rel=1e-5)
        tuner.step(x, y, 1)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in states[0]:  # Keras-style weighting keeps micro-batches equal to one batch
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ pieces
def test_class_weights_and_the_weighted_loss():
    assert class_weights([10, 10], "none") is None
    assert class_weights([30, 10], "balanced") == pytest.approx([40 / 60, 40 / 20])
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    w = torch.tensor([0.5, 1.0, 3.0])
    per_image = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    assert float(classification_loss(logits, labels, 0.1, w)) == pytest.approx(float((per_image * w[labels]).mean()))
    assert float(classification_loss(logits, labels, 0.1)) == pytest.approx(float(per_image.mean()))


def test_option_checks():
    with pytest.raises(ValueError, match="needs validation images"):
        TrainOptions(keep="best", validation_fraction=0)
    with pytest.raises(ValueError, match="rotation_range, zoom_range: only for mode 'full'"):
        TrainOptions(mode="head", rotation_range=10, zoom_range=0.1)
    with pytest.raises(ValueError, match="class weight must be one of"):
        TrainOptions(class_weight="auto")
    with pytest.raises(ValueError, match="zoom range"):
        TrainOptions(mode="full", zoom_range=1.5)
    assert TrainOptions().keep == "last" and not TrainOptions().geometric_augmentation
    # a checkpoint written before these settings existed still resumes with them at their defaults
    assert not {"keep", "class_weight", "rotation_range", "zoom_range"} & set(TrainOptions(mode="full").identity())
    assert TrainOptions(mode="full", keep="best", zoom_range=0.1).identity()["zoom_range"] == 0.1


def test_geometric_augmentation_is_reproducible_in_range_and_off_by_default():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    plain = TrainingTransform("flip", "resize")
    off = TrainingTransform("flip", "resize", GeometricAugmentation())
    on = TrainingTransform("flip", "resize", GeometricAugmentation(40, 0.2, 0.2, 0.2))
    for seed in range(3):  # off: the same draws and images as before the option existed
        assert torch.equal(plain(pixels, 32, torch.Generator().manual_seed(seed)),
                           off(pixels, 32, torch.Generator().manual_seed(seed)))
    a = on(pixels, 32, torch.Generator().manual_seed(1))
    assert torch.equal(a, on(pixels, 32, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, on(pixels, 32, torch.Generator().manual_seed(2)))
    assert a.shape == (3, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 1

    for _ in range(50):
        g = torch.Generator().manual_seed(_)
        rotation = GeometricAugmentation(rotation_range=30).matrix(32, 32, g)
        angle = math.degrees(math.atan2(float(rotation[1, 0]), float(rotation[0, 0])))
        assert abs(angle) <= 30 and torch.linalg.det(rotation[:, :2]) == pytest.approx(1.0, abs=1e-5)
        shift = GeometricAugmentation(width_shift_range=0.2, height_shift_range=4).matrix(32, 64, g)
        assert torch.equal(shift[:, :2], torch.eye(2))
        assert abs(float(shift[0, 2])) <= 2 * 0.2 + 1e-6 and abs(float(shift[1, 2])) <= 2 * 4 / 32 + 1e-6
        zoom = GeometricAugmentation(zoom_range=0.2).matrix(32, 32, g)
        assert 0.8 - 1e-6 <= float(zoom[0, 0]) <= 1.2 + 1e-6 and 0.8 - 1e-6 <= float(zoom[1, 1]) <= 1.2 + 1e-6



def test_geometric_augmentation_moves_pixels_as_keras_does(monkeypatch):
    import pnasnet.training.augment as augment

    monkeypatch.setattr(augment, "_uniform", lambda generator, low, high: high)  # every draw at its maximum
    ramp = (torch.arange(16.0).repeat(3, 16, 1) / 16).contiguous()  # value = column / 16
    # a shift of +3 pixels: output column c shows input column c + 3 (the border repeated beyond)
    shifted = GeometricAugmentation(width_shift_range=3)(ramp, torch.Generator())
    torch.testing.assert_close(shifted[:, :, :13], ramp[:, :, 3:])
    torch.testing.assert_close(shifted[:, :, 13:], ramp[:, :, 15:].expand(3, 16, 3))
    # the same as a fraction of the width
    torch.testing.assert_close(GeometricAugmentation(width_shift_range=3 / 16)(ramp, torch.Generator()), shifted)
    # a rotation by 90 degrees of a square image turns rows into columns
    rotated = GeometricAugmentation(rotation_range=90)(ramp, torch.Generator())
    torch.testing.assert_close(rotated, ramp.transpose(1, 2).flip(1), atol=1e-5, rtol=0)


def test_the_card_command_gives_the_same_options_back():
    """The model card's command for a run started from Python, parsed by the real `pnasnet train`
    parser, reproduces every option that has a flag (a switch is a bare flag, never `--x True`)."""
    import dataclasses

    from pnasnet.cli.main import build_parser
    from pnasnet.training.model_card import equivalent_command

    defaults = TrainOptions()
    changed = {}
    for f in dataclasses.fields(TrainOptions):  # every option away from its default
        value = getattr(defaults, f.name)
        if isinstance(value, bool) or f.name == "bounded_activation":
            changed[f.name] = not value if isinstance(value, bool) else True
    changed.update(mode="full", epochs=3, learning_rate=0.02, batch_size=4, keep="best", class_weight="balanced")
    options = dataclasses.replace(defaults, **changed)
    command = equivalent_command("imgs", "out", "pnasnet5_mobile", None, options)
    args = build_parser().parse_args(command[1:])
    parsed = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
                             if hasattr(args, f.name)})
    for f in dataclasses.fields(TrainOptions):
        if hasattr(args, f.name):
            assert getattr(parsed, f.name) == getattr(options, f.name), f.name
