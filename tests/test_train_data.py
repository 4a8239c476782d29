"""Training data: folder scan and its errors, the hash split, augmentation, reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pnasnet.training import DatasetError, scan_image_folder, split_train_validation
from pnasnet.training.augment import TrainingTransform, random_box, tf_slim_train_transform
from pnasnet.training.dataset import split_fraction_key
from pnasnet.training.loader import epoch_batches
from pnasnet.training.report import confusion_matrix, draw_learning_curves, evaluation_report, EpochRecord


def _image(path: Path, value: int = 128, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, counts: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _image(root / name / f"{name}_{i}.png", i)
    return root


# ----------------------------------------------------------------------------------------- scan
def test_scan_classes_sorted_recursive_and_loose_files_ignored(tmp_path):
    root = _folder(tmp_path / "data", {"zebra": 2, "apple": 3})
    _image(root / "apple" / "nested" / "deep.jpg")
    _image(root / "loose.png")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    folder = scan_image_folder(root)
    assert folder.classes == ["apple", "zebra"]
    assert folder.counts() == [4, 2]
    assert {im.name for im in folder.images if im.label == 0} == {"apple_0.png", "apple_1.png", "apple_2.png",
                                                                   "nested/deep.jpg"}
    assert [Path(p).name for p in folder.ignored] == ["loose.png"]


@pytest.mark.parametrize("counts, message", [
    ({"cats": 3, "dogs": 0}, r"without any images: dogs"),
    ({"cats": 3}, r"only the class 'cats'.*at least two classes"),
    ({}, r"no class folders"),
    ({"cats": 3, "dogs": 1, "owls": 1}, r"single image: dogs, owls"),
])
def test_unusable_folders_are_refused_by_name(tmp_path, counts, message):
    root = _folder(tmp_path / "data", counts)
    with pytest.raises(DatasetError, match=message):
        scan_image_folder(root)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        scan_image_folder(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------- split
def test_split_is_stable_when_files_are_added(tmp_path):
    root = _folder(tmp_path / "data", {"a": 30, "b": 30})
    before = split_train_validation(scan_image_folder(root).images, ["a", "b"], 0.2)
    _folder(root, {"a": 50, "b": 45})  # adds a_30..a_49, b_30..b_44; keeps the others
    after = split_train_validation(scan_image_folder(root).images, ["a", "b"], 0.2)
    side_before = {im.path: "val" for im in before.validation} | {im.path: "train" for im in before.train}
    side_after = {im.path: "val" for im in after.validation} | {im.path: "train" for im in after.train}
    assert all(side_after[p] == side for p, side in side_before.items())
    share = len(after.validation) / (len(after.validation) + len(after.train))
    assert 0.08 < share < 0.35  # about the fraction asked for (95 images)


def test_split_nohash_variants_stay_together_and_small_classes_get_both_sides(tmp_path):
    assert split_fraction_key("clip7_nohash_1.jpg") == split_fraction_key("clip7_nohash_2.jpg")
    assert split_fraction_key("clip7.jpg") != split_fraction_key("clip8.jpg")
    root = _folder(tmp_path / "data", {"big": 40, "tiny": 2})
    folder = scan_image_folder(root)
    split = split_train_validation(folder.images, folder.classes, 0.2)
    balance = {row["label"]: row for row in split.balance(folder.classes)}
    assert balance["tiny"]["train"] == 1 and balance["tiny"]["validation"] == 1
    assert balance["big"]["train"] + balance["big"]["validation"] == 40
    assert split_train_validation(folder.images, folder.classes, 0.0).validation == []


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_batches(20, 6, seed=3, epoch=1)
    assert a == epoch_batches(20, 6, seed=3, epoch=1)
    assert a != epoch_batches(20, 6, seed=3, epoch=2)
    assert len(a) == 3 and all(len(b) == 6 for b in a)  # 20 // 6 steps, partial batch dropped
    small = epoch_batches(4, 32, seed=0, epoch=0)  # fewer images than a batch: one smaller batch
    assert len(small) == 1 and sorted(small[0]) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------- augmentation
def test_random_box_stays_within_the_tf_slim_ranges():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = random_box(90, 160, g)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
        assert h * w >= 0.1 * 90 * 160 - 1
        if (h, w) != (90, 160):
            assert 0.70 <= w / h <= 1.40  # 3/4 .. 4/3, plus rounding


def test_training_transforms_are_reproducible_and_in_range():
    pixels = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    a = tf_slim_train_transform(pixels, 32, torch.Generator().manual_seed(5))
    b = tf_slim_train_transform(pixels, 32, torch.Generator().manual_seed(5))
    c = tf_slim_train_transform(pixels, 32, torch.Generator().manual_seed(6))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    flip = TrainingTransform("flip", "resize")
    outputs = {bool(torch.equal(flip(pixels, 16, torch.Generator().manual_seed(s)),
                                TrainingTransform("none", "resize")(pixels, 16, None))) for s in range(12)}
    assert outputs == {True, False}  # flipped sometimes, not always


# ----------------------------------------------------------------------------------------- reports
def test_confusion_matrix_and_per_class_precision_recall():
    true = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 1, 0]
    assert confusion_matrix(true, pred, 3) == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    report = evaluation_report(true, pred, ["a", "b", "c"], evaluated_on="validation")
    assert report["accuracy"] == pytest.approx(4 / 6) and report["correct"] == 4
    per = {row["label"]: row for row in report["per_class"]}
    assert per["a"]["precision"] == pytest.approx(2 / 3) and per["a"]["recall"] == pytest.approx(2 / 3)
    assert per["b"]["precision"] == pytest.approx(2 / 3) and per["b"]["recall"] == 1.0
    assert per["c"]["precision"] is None and per["c"]["recall"] == 0.0  # never predicted
    json.dumps(report)


def test_learning_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    history = [EpochRecord(i, 1.0 / i, 0.5 + 0.1 * i, 1.2 / i, 0.4 + 0.1 * i) for i in range(1, 5)]
    path = draw_learning_curves(history, tmp_path / "curves.png", title="test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 420)
        pixels = np.asarray(image.convert("RGB"))
    # both series are drawn: the train (blue) and validation (orange) colours appear
    assert ((pixels == (31, 119, 180)).all(-1)).sum() > 50
    assert ((pixels == (255, 127, 14)).all(-1)).sum() > 50
