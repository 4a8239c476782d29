"""Head mode end to end on real photographs (scikit-image's texture photos), through the CLI: it
learns, writes a model directory that `pnasnet classify --model` and `create_model` load, caches
features by content, and reports unreadable files and bad folders."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pnasnet
from pnasnet.cli import main
from pnasnet.training import DatasetError, SilentReporter, train
from pnasnet.training.feature_cache import cached_features
from pnasnet.training.report import matplotlib_available

from train_images import TEXTURES, make_texture_folder

FIXTURE = Path(__file__).parent / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_model_thread")]


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    # 3 classes x 36 tiles of 85 px: brick, grass, gravel
    return make_texture_folder(tmp_path_factory.mktemp("textures") / "images", grid=6)


def _train_args(image_dir, out, cache, *extra):
    return ["train", str(image_dir), "--out", str(out), "--model", "auto", "--weights", str(FIXTURE),
            "--image-size", "96", "--batch-size", "16", "--epochs", "30", "--workers", "0",
            "--cache-dir", str(cache), "--quiet", *extra]


def test_head_mode_learns_and_the_model_directory_classifies(textures, tmp_path, capsys):
    out, cache = tmp_path / "model", tmp_path / "cache"
    assert main(_train_args(textures, out, cache, "--assert-accuracy-at-least", "0.6")) == 0
    err = capsys.readouterr().err
    assert "108 feature vectors computed, 0 from the cache" in err
    table = {m[1]: int(m[2]) + int(m[3]) for m in re.finditer(r"^ +(\w+) +(\d+) +(\d+)$", err, re.M)}
    assert table == {"brick": 36, "grass": 36, "gravel": 36}  # the class balance: train + val per class
    assert "epoch 1/30  loss" in err and "epoch 30/30  loss" in err and "validation accuracy" in err

    curves = ["curves.png"] if matplotlib_available() else []  # matplotlib: the train extra
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "config.json", *curves, "labels.txt",
                                                            "metrics.json", "model.safetensors"])
    assert (out / "labels.txt").read_text().splitlines() == list(TEXTURES)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    final = metrics["final"]
    # Learnt: chance is 1/3 on held-out tiles (content never seen in training).
    assert final["evaluated_on"] == "validation" and final["accuracy"] >= 0.6
    assert len(metrics["epochs"]) == 30
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["epochs"][-1]["val_accuracy"] == pytest.approx(final["accuracy"])
    matrix = np.array(final["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == final["images"] == config["data"]["validation_images"]
    assert [row["support"] for row in final["per_class"]] == matrix.sum(1).tolist()
    assert config["image_size"] == 96 and config["labels"] == list(TEXTURES) and config["mode"] == "head"
    if curves:
        with Image.open(out / "curves.png") as image:
            assert image.format == "PNG"

    # The directory loads as a model: labels, expected size, and no dropout at inference.
    model = pnasnet.create_model(str(out))
    assert model.labels == list(TEXTURES) and model.expected_image_size == (96, 96) and model.num_classes == 3

    # `pnasnet classify --model DIR` on the validation images gives the accuracy metrics.json reports.
    split = _validation_images(textures, config)
    assert main(["classify", *split, "--model", str(out), "--json", "--workers", "0", "--top-k", "1", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == final["images"] and all(r["top_k"][0]["label"] in TEXTURES for r in lines)
    correct = sum(Path(r["path"]).parent.name == r["top_k"][0]["label"] for r in lines)
    assert correct / len(lines) == pytest.approx(final["accuracy"])

    # Again with a threshold it misses: the features come from the cache, the exit status is 1.
    assert main(_train_args(textures, out, cache, "--overwrite", "--assert-accuracy-at-least", "0.9999")) == 1
    err = capsys.readouterr().err
    assert "0 feature vectors computed, 108 from the cache" in err and "below the required 0.9999" in err
    # and a finished model is not overwritten by accident
    assert main(_train_args(textures, out, cache)) == 2
    assert "already holds a trained model" in capsys.readouterr().err


def _validation_images(image_dir: Path, config: dict) -> list[str]:
    from pnasnet.training import scan_image_folder, split_train_validation

    folder = scan_image_folder(image_dir)
    split = split_train_validation(folder.images, folder.classes, config["training"]["validation_fraction"])
    assert len(split.validation) == config["data"]["validation_images"]
    return [im.path for im in split.validation]


def test_feature_cache_is_keyed_by_file_content(tmp_path):
    backbone = pnasnet.create_model("auto", weights=FIXTURE, num_classes=0)
    images = make_texture_folder(tmp_path / "images", classes=("brick",), grid=2, tile_size=48)
    paths = sorted(str(p) for p in (images / "brick").iterdir())
    first = cached_features(backbone, paths, cache_dir=tmp_path / "cache", image_size=48, workers=0)
    assert first.computed == 4 and not first.failed
    # a renamed copy is found by content; an edited file is computed again
    copy = images / "brick" / "renamed.png"
    shutil.copy(paths[0], copy)
    with Image.open(paths[1]) as im:
        Image.fromarray(255 - np.asarray(im)).save(paths[1])
    second = cached_features(backbone, paths + [str(copy)], cache_dir=tmp_path / "cache", image_size=48, workers=0)
    assert second.computed == 1 and second.from_cache == 4
    np.testing.assert_array_equal(second.vectors[str(copy)], first.vectors[paths[0]])
    assert not np.array_equal(second.vectors[paths[1]], first.vectors[paths[1]])
    # other preprocessing: another cache entry, everything computed
    third = cached_features(backbone, paths, cache_dir=tmp_path / "cache", image_size=48, transform="resize",
                            workers=0)
    assert third.computed == 4 and third.folder != first.folder


def test_unreadable_files_are_reported_and_skipped(tmp_path, capsys):
    images = make_texture_folder(tmp_path / "images", grid=2, tile_size=48)
    good = images / "grass" / "grass_00.png"
    (images / "grass" / "broken.jpg").write_bytes(good.read_bytes()[:200])   # truncated
    (images / "gravel" / "notes.png").write_text("not an image at all")       # not an image
    out = tmp_path / "model"
    code = main(["train", str(images), "--out", str(out), "--model", "auto", "--weights", str(FIXTURE),
                 "--image-size", "48", "--epochs", "2", "--workers", "0", "--cache-dir", str(tmp_path / "cache"),
                 "-q"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("broken.jpg") == 1 and err.count("notes.png") == 1  # each reported once
    assert "cannot read" in err and "truncated" in err
    assert "2 of 14 images could not be read and are left out" in err
    config = json.loads((out / "config.json").read_text())
    assert sorted(Path(u["path"]).name for u in config["data"]["unreadable"]) == ["broken.jpg", "notes.png"]
    assert config["data"]["images"] == 12


def test_bad_folders_fail_with_a_clear_message(tmp_path, capsys):
    images = make_texture_folder(tmp_path / "images", grid=2, tile_size=32)
    (images / "empty_class").mkdir()
    code = main(["train", str(images), "--out", str(tmp_path / "m"), "--model", "auto", "--weights", str(FIXTURE)])
    assert code == 2 and "without any images: empty_class" in capsys.readouterr().err
    (images / "empty_class").rmdir()
    # a class whose only other image is unreadable: left with one readable image
    for extra in list((images / "gravel").iterdir())[1:]:
        extra.unlink()
    (images / "gravel" / "bad.png").write_text("no")
    with pytest.raises(DatasetError, match="single readable image: gravel"):
        train(images, tmp_path / "m", model="auto", weights=FIXTURE, image_size=32, workers=0,
              cache_dir=str(tmp_path / "cache"), reporter=SilentReporter())
    assert not (tmp_path / "m").exists()  # nothing left behind by the failed runs
    with pytest.raises(ValueError, match="must not be inside the image folder"):
        train(images, images / "model", model="auto", weights=FIXTURE, reporter=SilentReporter())
    # options that head mode does not use are refused rather than ignored
    code = main(["train", str(images), "--out", str(tmp_path / "m"), "--model", "auto", "--weights", str(FIXTURE),
                 "--aux-head"])
    assert code == 2 and "only for mode 'full'" in capsys.readouterr().err
