"""Eval transforms against TensorFlow's own outputs (fixture made by tools/make_resize_reference.py
with TensorFlow 2.12.1; TensorFlow is not needed here) and against a float64 loop of the formula."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pnasnet.data import ImageDecodeError, load_images, resize_transform, tf_central_crop_box, tf_slim_eval_transform

FIXTURE = Path(__file__).parent / "fixtures" / "resize" / "tf_eval_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _cases(ref, kind):
    out = []
    for key in sorted(ref):
        if key.startswith(kind + "_"):
            _, name, size = key.split("_")
            out.append((key, ref["image_" + name], int(size), ref[key]))
    return out


def test_fixture_is_from_tensorflow(ref):
    assert str(ref["tf_version"]).startswith("2.")
    assert len(_cases(ref, "eval")) >= 6 and len(_cases(ref, "resize")) >= 4
    shapes = {ref[k].shape[:2] for k in ref if k.startswith("image_")}
    assert any(h % 2 for h, w in shapes) and any(h % 2 == 0 for h, w in shapes)


def test_tf_slim_eval_matches_tensorflow(ref):
    for key, img, size, expected in _cases(ref, "eval"):
        out = tf_slim_eval_transform(img, size)
        assert out.shape == (3, size, size) and out.dtype == torch.float32, key
        err = np.abs(out.permute(1, 2, 0).numpy() - expected).max()
        assert err <= 1e-5, f"{key}: max abs error {err}"


def test_fixture_tells_legacy_from_half_pixel_resize(ref):
    # The reference must be able to catch the usual mistake (half-pixel centres, i.e. TF2 /
    # PyTorch bilinear): after the same crop, that differs from TF1's legacy resize clearly.
    worst = 0.0
    for key, img, size, expected in _cases(ref, "eval"):
        top, left, ch, cw = tf_central_crop_box(*img.shape[:2])
        crop = torch.from_numpy(img[top : top + ch, left : left + cw].astype(np.float32) / 255).permute(2, 0, 1)[None]
        hp = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        worst = max(worst, float(np.abs(hp.permute(1, 2, 0).numpy() - expected).max()))
    assert worst > 1e-2


def test_resize_transform_matches_tf2_resize(ref):
    for key, img, size, expected in _cases(ref, "resize"):
        out = resize_transform(img, size)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        err = np.abs(out.permute(1, 2, 0).numpy() - expected).max()
        assert err <= 1e-5, f"{key}: max abs error {err}"


def _loop_reference(img_u8: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel float64 loop of the documented formula (independent of the vectorised code)."""
    h, w = img_u8.shape[:2]
    top, left = h // 16, w // 16  # 0.875 crop: int(n * 0.0625)
    ch, cw = h - 2 * top, w - 2 * left
    x = img_u8.astype(np.float64) / 255.0
    out = np.zeros((out_h, out_w, 3))
    for i in range(out_h):
        sy = i * ch / out_h
        y0, y1 = int(math.floor(sy)), min(int(math.ceil(sy)), ch - 1)
        fy = sy - math.floor(sy)
        for j in range(out_w):
            sx = j * cw / out_w
            x0, x1 = int(math.floor(sx)), min(int(math.ceil(sx)), cw - 1)
            fx = sx - math.floor(sx)
            a, b = x[top + y0, left + x0], x[top + y0, left + x1]
            c, d = x[top + y1, left + x0], x[top + y1, left + x1]
            out[i, j] = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


@pytest.mark.parametrize("shape,size", [((20, 9), (7, 7)), ((5, 6), (9, 9)), ((47, 33), (13, 17)), ((16, 16), (14, 14))])
def test_tf_slim_eval_matches_loop_reference(shape, size):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    out = tf_slim_eval_transform(img, size).permute(1, 2, 0).numpy()
    assert out.shape == size + (3,)
    assert np.abs(out - _loop_reference(img, *size)).max() <= 1e-5


def test_central_crop_box_rounding():
    assert tf_central_crop_box(331, 331) == (20, 20, 291, 291)
    assert tf_central_crop_box(37, 53) == (2, 3, 33, 47)
    assert tf_central_crop_box(15, 16) == (0, 1, 15, 14)
    assert tf_central_crop_box(10, 10, 1.0) == (0, 0, 10, 10)
    for n in range(1, 3000):
        top, _, size, _ = tf_central_crop_box(n, 1)
        assert top == n // 16 and size == n - 2 * (n // 16)
    with pytest.raises(ValueError):
        tf_central_crop_box(10, 10, 0.0)


def test_eval_transform_inputs_agree(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    base = tf_slim_eval_transform(img, 33)
    assert base.shape == (3, 33, 33) and base.dtype == torch.float32 and base.is_contiguous()
    assert 0.0 <= float(base.min()) and float(base.max()) <= 1.0
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    for other in (path, str(path), path.read_bytes(), Image.fromarray(img), torch.from_numpy(img).permute(2, 0, 1)):
        assert torch.equal(tf_slim_eval_transform(other, 33), base)
    as_float = tf_slim_eval_transform(img.astype(np.float32) * np.float32(1 / 255), 33)
    assert torch.allclose(as_float, base, atol=1e-6)
    assert torch.allclose(tf_slim_eval_transform(torch.from_numpy(img).permute(2, 0, 1).float() / 255, 33), base, atol=1e-6)
    assert tf_slim_eval_transform(img, (20, 40)).shape == (3, 20, 40)


def test_eval_transform_constant_and_grey():
    out = tf_slim_eval_transform(np.full((40, 30, 3), 200, np.uint8), 17)
    assert torch.allclose(out, torch.full((3, 17, 17), 200 / 255), atol=1e-6)
    grey = tf_slim_eval_transform(np.linspace(0, 1, 100).reshape(10, 10), 8)  # HxW float
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_transform_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tf_slim_eval_transform(np.full((8, 8, 3), 3.0, np.float32), 4)
    with pytest.raises(ValueError, match="3, H, W"):
        tf_slim_eval_transform(torch.rand(8, 8, 3), 4)
    with pytest.raises(ValueError, match="positive"):
        tf_slim_eval_transform(np.zeros((8, 8, 3), np.uint8), 0)


def test_resize_transform_shape_and_identity():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    out = resize_transform(img, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    same = resize_transform(img, (30, 45))
    assert torch.equal(same, torch.from_numpy(img.astype(np.float32) * np.float32(1 / 255)).permute(2, 0, 1))
    aa = resize_transform(img, 16, antialias=True)
    assert aa.shape == (3, 16, 16) and not torch.equal(aa, out)


def test_load_images(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i, shape in enumerate([(40, 60), (61, 33)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(p)
        paths.append(p)
    batch = load_images(paths, 19)
    assert batch.shape == (2, 3, 19, 19)
    assert torch.equal(batch[1], tf_slim_eval_transform(paths[1], 19))
    assert torch.equal(load_images(paths, 19, transform="resize")[0], resize_transform(paths[0], 19))
    assert load_images([], 19).shape == (0, 3, 19, 19)
    with pytest.raises(ValueError, match="transform"):
        load_images(paths, 19, transform="bicubic")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageDecodeError, match=r"bad\.jpg"):
        load_images([paths[0], bad], 19)
