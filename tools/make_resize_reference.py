"""Make tests/fixtures/resize/tf_eval_reference.npz with real TensorFlow.

Needs TensorFlow (made with tensorflow-cpu 2.12.1, numpy 1.23.5) in a scratch environment, not in
the project's: ``python3.11 -m venv $TFENV && $TFENV/bin/pip install tensorflow-cpu==2.12.1
'numpy<1.24'`` then ``$TFENV/bin/python tools/make_resize_reference.py``.

For a few small uint8 RGB images of odd and even sizes it records:

* ``eval_<name>_<size>``: TF-Slim ``inception_preprocessing.preprocess_for_eval`` without the final
  ``(x - 0.5) * 2``: ``tf.image.convert_image_dtype(image, tf.float32)`` ->
  ``tf.image.central_crop(image, central_fraction=0.875)`` ->
  ``tf.compat.v1.image.resize_bilinear(image[None], [size, size], align_corners=False)[0]``.
* ``resize_<name>_<size>``: TF2 ``tf.image.resize(convert_image_dtype(image), [size, size],
  method="bilinear", antialias=False)`` (the plain resize of the TF-Hub instructions).
* ``image_<name>``: the uint8 input ``[H, W, 3]``.

All outputs are float32 ``[size, size, 3]`` (HWC, as TF produces them).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "resize", "tf_eval_reference.npz")

# name: (height, width); odd/even, portrait/landscape/square, and a tiny one that gets upsampled
SHAPES = {"h37w53": (37, 53), "h64w48": (64, 48), "h61w61": (61, 61), "h11w13": (11, 13)}
EVAL_SIZES = {"h37w53": (23, 31), "h64w48": (23, 31), "h61w61": (23,), "h11w13": (23,)}
RESIZE_SIZES = {"h37w53": (23,), "h64w48": (23,), "h61w61": (23,), "h11w13": (23,)}


def make_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # smooth gradients plus noise so that interpolation errors would show, full 0..255 range used
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([yy, xx, 1 - (yy + xx) / 2], axis=-1) * 200
    img = base + rng.integers(0, 56, size=(h, w, 3))
    img[0, 0] = 0
    img[-1, -1] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def tf_slim_eval(image: np.ndarray, size: int) -> np.ndarray:
    x = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
    x = tf.image.central_crop(x, central_fraction=0.875)
    x = tf.compat.v1.image.resize_bilinear(x[None], [size, size], align_corners=False)[0]
    return x.numpy().astype(np.float32)


def tf_plain_resize(image: np.ndarray, size: int) -> np.ndarray:
    x = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
    return tf.image.resize(x, [size, size], method="bilinear", antialias=False).numpy().astype(np.float32)


def main() -> int:
    rng = np.random.default_rng(20171213)
    arrays: dict[str, np.ndarray] = {}
    for name, (h, w) in SHAPES.items():
        img = make_image(rng, h, w)
        arrays[f"image_{name}"] = img
        for s in EVAL_SIZES[name]:
            arrays[f"eval_{name}_{s}"] = tf_slim_eval(img, s)
        for s in RESIZE_SIZES[name]:
            arrays[f"resize_{name}_{s}"] = tf_plain_resize(img, s)
    arrays["tf_version"] = np.array(tf.__version__)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes) with TensorFlow {tf.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
