"""Full fine-tuning: batch-norm momentum, frozen cells and batch norm, layer-wise learning rates,
gradient accumulation, aux head, bfloat16, and exact resume after a real SIGKILL or Ctrl-C."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pnasnet
from pnasnet.data import load_images
from pnasnet.training import SilentReporter, TrainOptions, train
from pnasnet.training.checkpoint import CHECKPOINT_FILE, CheckpointMismatchError, load_checkpoint
from pnasnet.training.finetune import FineTuner
from pnasnet.training.models import build_classifier
from pnasnet.training.objective import classification_loss

from train_images import make_texture_folder

FIXTURE = Path(__file__).parent / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"
HELPER = Path(__file__).parent / "train_interrupt_helper.py"
CPU = torch.device("cpu")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_model_thread")]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """12 real texture tiles at 48 px (4 per class) and their labels."""
    root = make_texture_folder(tmp_path_factory.mktemp("batch") / "images", grid=2, tile_size=64)
    paths = sorted(root.glob("*/*"))
    labels = torch.tensor([["brick", "grass", "gravel"].index(p.parent.name) for p in paths])
    return load_images(paths, 48), labels


def _classifier(image_size=48, aux_head=False, batch_norm_decay=0.99, dropout_rate=0.0):
    backbone = pnasnet.create_model("auto", weights=FIXTURE, num_classes=0)
    torch.manual_seed(0)
    return build_classifier(backbone, 3, image_size=image_size, dropout_rate=dropout_rate, aux_head=aux_head,
                            batch_norm_decay=batch_norm_decay)


def _tuner(model, **options):
    options = TrainOptions(mode="full", dropout_rate=0.0, **options)
    return FineTuner(model, options, total_steps=10, device=CPU)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_batch_norm_moving_statistics_follow_the_set_decay(batch):
    x, y = batch
    base = _classifier()
    deltas = {}
    for decay in (0.99, 0.9):
        model = copy.deepcopy(base)
        tuner = _tuner(model, batch_norm_decay=decay, freeze_batch_norm="off")
        conv0 = model.conv0.weight.detach().clone()
        old = _state(model)
        tuner.train_mode()
        tuner.step(x, y, 0)
        new = _state(model)
        deltas[decay] = {k: new[k] - old[k] for k in old if k.endswith(("running_mean", "running_var"))}
        if decay == 0.9:  # conv0_bn against the rule, with batch statistics computed apart from the model
            out = F.conv2d((x - 0.5) * 2.0, conv0, stride=2)
            mean, var = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3), unbiased=True)
            torch.testing.assert_close(new["conv0_bn.running_mean"], 0.9 * old["conv0_bn.running_mean"] + 0.1 * mean,
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(new["conv0_bn.running_var"], 0.9 * old["conv0_bn.running_var"] + 0.1 * var,
                                       rtol=1e-5, atol=1e-6)
    # Same weights, same batch: each moving statistic moves 10x as far with decay 0.9 as with 0.99.
    assert len(deltas[0.9]) == 2 * sum(1 for _ in base.batch_norms())
    for key, small in deltas[0.99].items():
        torch.testing.assert_close(deltas[0.9][key], 10 * small, rtol=1e-3, atol=2e-5)  # float32 rounding of old + delta
    assert all(float(d.abs().max()) > 0 for d in deltas[0.99].values())


def test_frozen_cells_do_not_change_and_the_rest_trains(batch):
    x, y = batch
    model = _classifier()
    tuner = _tuner(model, freeze_cells=2, learning_rate=0.05)
    before = _state(model)
    tuner.train_mode()
    losses = [tuner.step(x, y, step)[0] for step in range(2)]
    after = _state(model)
    frozen = ("conv0.", "conv0_bn.", "cell_stem_0.", "cell_stem_1.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if k.startswith(frozen)}, "a frozen layer changed"
    assert any(k.startswith("cell_0.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("cell_0.") and k.endswith("running_mean") for k in changed)
    assert {"final_layer.FC.weight", "final_layer.FC.bias"} <= changed
    trained = {id(p) for g in tuner.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in model.cell_stem_1.parameters())
    assert all(loss == loss for loss in losses)


def test_batch_norm_freeze_keeps_statistics_but_trains_scale_and_offset(batch):
    x, y = batch
    model = _classifier()
    tuner = _tuner(model, freeze_batch_norm="on", learning_rate=0.05)
    before = _state(model)
    tuner.train_mode()
    for step in range(2):  # the new final layer starts at zero: the backbone gets gradients from step 2
        tuner.step(x, y, step)
    after = _state(model)
    for key in before:
        if key.endswith(("running_mean", "running_var")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["cell_2.beginning_bn.weight"], after["cell_2.beginning_bn.weight"])
    assert TrainOptions(mode="full", batch_size=16, accumulation_steps=4).batch_norm_frozen  # 4 per pass: auto on
    assert not TrainOptions(mode="full", batch_size=16).batch_norm_frozen


def test_a_few_steps_reduce_the_loss(batch):
    x, y = batch
    model = _classifier()
    tuner = _tuner(model, learning_rate=0.02)

    def loss_now():
        with torch.no_grad():
            return float(classification_loss(model.classify(x), y, 0.1))

    tuner.train_mode()
    start = loss_now()
    for step in range(6):
        tuner.step(x, y, step)
    assert loss_now() < 0.8 * start


def test_gradient_accumulation_equals_one_large_batch(batch):
    x, y = batch
    base = _classifier()
    results = []
    for steps in (1, 3):
        model = copy.deepcopy(base)
        tuner = _tuner(model, batch_size=12, accumulation_steps=steps, freeze_batch_norm="on", learning_rate=0.05)
        tuner.train_mode()
        for step in range(2):
            tuner.step(x, y, step)
        results.append(_state(model))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


def test_layer_wise_learning_rates(batch):
    x, y = batch
    model = _classifier()
    tuner = _tuner(model, layer_lr_decay=0.5, learning_rate=0.1, lr_schedule="cosine")
    tuner.train_mode()
    tuner.step(x, y, 0)
    lrs = {g["name"]: g["lr"] for g in tuner.optimizer.param_groups}
    order = ["head", "cell_2", "cell_1", "cell_0", "cell_stem_1", "cell_stem_0", "stem"]
    assert list(lrs) == order
    assert [lrs[n] for n in order] == pytest.approx([0.1 * 0.5 ** d for d in range(7)])
    assert tuner.learning_rate(5) == pytest.approx(0.05)  # cosine, halfway through 10 steps


def test_aux_head_and_bfloat16_steps(batch):
    x, y = batch
    x96 = F.interpolate(x, size=96, mode="bilinear", align_corners=False)  # the aux head needs a 5x5 map
    model = _classifier(image_size=96, aux_head=True)
    tuner = _tuner(model, aux_head=True, bfloat16=True, learning_rate=0.05)
    aux_fc = model.aux_1.aux_logits.FC.weight.detach().clone()
    tuner.train_mode()
    loss_sum, correct = tuner.step(x96, y, 0)
    assert loss_sum == loss_sum and 0 <= correct <= len(y)
    assert not torch.equal(aux_fc, model.aux_1.aux_logits.FC.weight)  # the aux loss reached the aux head


# ---------------------------------------------------------------------------------------- resume
def _settings():
    return dict(model="auto", weights=str(FIXTURE), mode="full", image_size=48, epochs=3, batch_size=6,
                learning_rate=0.02, dropout_rate=0.3)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    # 27 images: 21 to train on (3 steps of 6 per epoch), 6 to validate with
    return make_texture_folder(tmp_path_factory.mktemp("resume") / "images", grid=3, tile_size=64)


@pytest.fixture(scope="module")
def reference(small_folder, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "model"
    result = train(small_folder, out, workers=0, reporter=SilentReporter(), **_settings())
    assert len(result.history) == 3 and not (out / CHECKPOINT_FILE).exists()
    return out, result


def _run_helper(small_folder, out, action, epoch, step, tmp_path):
    marker = tmp_path / "marker"
    settings = json.dumps(_settings() | {"workers": 1})
    proc = subprocess.Popen([sys.executable, str(HELPER), str(small_folder), str(out), settings, action,
                             str(epoch), str(step), str(marker)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper ended early ({proc.returncode}): {proc.stdout.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "helper did not reach the interruption point"
        time.sleep(0.05)
    return proc


def _assert_same_model(a: Path, b: Path):
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigkill_after_an_epoch_then_resume_gives_the_uninterrupted_result(small_folder, reference, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "model"
    proc = _run_helper(small_folder, out, "hang", epoch=2, step=1, tmp_path=tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)  # mid-way through epoch 2: only epoch 1's checkpoint is on disk
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        saved = load_checkpoint(out / CHECKPOINT_FILE)
        assert (saved["epoch"], saved["step"]) == (1, 0)
        # at once, while the killed run's decoding worker may still be alive
        result = train(small_folder, out, workers=0, reporter=SilentReporter(), **_settings())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # that orphaned worker, if it is still there
        except ProcessLookupError:
            pass
    assert result.resumed
    _assert_same_model(out, ref_out)
    assert [r.train_loss for r in result.history] == [r.train_loss for r in ref.history]
    assert not (out / CHECKPOINT_FILE).exists()


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(small_folder, reference, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "model"
    proc = _run_helper(small_folder, out, "ctrl-c", epoch=2, step=2, tmp_path=tmp_path)
    assert proc.wait(timeout=60) == 130, proc.stdout.read().decode()[-2000:]
    proc.stdout.close()
    saved = load_checkpoint(out / CHECKPOINT_FILE)
    assert (saved["epoch"], saved["step"]) == (1, 2)  # 0-based epoch 1 = the second, two steps done
    assert not (out / "model.safetensors").exists()

    with pytest.raises(CheckpointMismatchError, match="learning_rate"):
        train(small_folder, out, workers=0, reporter=SilentReporter(), **(_settings() | {"learning_rate": 0.03}))
    result = train(small_folder, out, workers=0, reporter=SilentReporter(), **_settings())
    _assert_same_model(out, ref_out)
    assert result.evaluation == ref.evaluation


def test_full_mode_model_directory(reference):
    out, result = reference
    model = pnasnet.create_model(str(out))
    assert model.labels == ["brick", "grass", "gravel"] and model.expected_image_size == (48, 48)
    assert not any(k.startswith("aux_") for k in model.state_dict())
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "full" and config["training"]["batch_norm_decay"] == 0.99
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["final"]["accuracy"] == result.val_accuracy


def test_full_mode_options_end_to_end_with_an_unreadable_file(small_folder, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(small_folder, images)
    (images / "grass" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "model"
    result = train(images, out, model="auto", weights=str(FIXTURE), mode="full", image_size=96, epochs=1,
                   batch_size=8, accumulation_steps=2, aux_head=True, freeze_cells=1, layer_lr_decay=0.8,
                   lr_schedule="cosine", augment="flip", workers=0, reporter=SilentReporter())
    assert [Path(p).name for p, _ in result.unreadable] == ["broken.png"]
    assert sum(row["train"] + row["validation"] for row in result.class_balance) == 27
    model = pnasnet.create_model(str(out))  # the aux head stays behind: inference only
    assert model.num_classes == 3 and not any(k.startswith("aux_") for k in model.state_dict())
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["aux_head"] and config["training"]["freeze_cells"] == 1
    assert config["data"]["unreadable"][0]["path"].endswith("broken.png")
    assert not (out / CHECKPOINT_FILE).exists()
