"""Evaluation transforms: decoded image -> float32 ``[3, size, size]`` tensor in [0, 1].

Two transforms, both returning what the model takes (float in [0, 1]; the model itself applies
TF-Slim's ``(x - 0.5) * 2`` to reach [-1, 1], so neither transform does):

* :func:`tf_slim_eval_transform` reproduces TF-Slim's
  ``inception_preprocessing.preprocess_for_eval`` (the preprocessing of ``pnasnet_large`` and
  ``pnasnet_mobile`` in ``preprocessing_factory``), minus the final [-1, 1] scaling:

  1. ``tf.image.convert_image_dtype(image, tf.float32)``: uint8 ``v`` becomes ``float32(v) *
     float32(1/255)`` (a multiplication, as TF does, not a division); float input is only cast.
  2. ``tf.image.central_crop(image, 0.875)``: on each axis of length ``n``,
     ``start = int((n - n * 0.875) / 2)`` (float64, truncated; equal to ``n // 16``) and
     ``length = n - 2 * start``.
  3. TF1 ``tf.image.resize_bilinear(..., align_corners=False)`` (``half_pixel_centers=False``) to
     ``size x size``, aspect ratio not kept: with ``scale = float32(in) / float32(out)``, output
     index ``i`` samples source coordinate ``y = float32(i) * scale`` (no half-pixel offset), between
     rows ``floor(y)`` and ``min(ceil(y), in - 1)`` with weight ``y - floor(y)``; no antialiasing.
     Interpolation in float32 in TF's order: ``top = tl + (tr - tl) * dx``,
     ``bottom = bl + (br - bl) * dx``, ``out = top + (bottom - top) * dy``.

  This is the transform behind the published accuracies (PNASNet-5 Large 82.9 % top-1 / 96.2 %
  top-5, Mobile 74.2 / 91.9, at 331 / 224 px). It matches TensorFlow 2.12's kernels to float32
  rounding (tests compare against a fixture made with TensorFlow).

* :func:`resize_transform`: a plain bilinear resize of the whole image to ``size x size`` (no
  crop), the way the TF-Hub module pages tell users to prepare images (TF2 ``tf.image.resize``,
  half-pixel centres, no antialiasing by default; same as ``torch.nn.functional.interpolate``
  ``bilinear, align_corners=False``). It is not what the published numbers were measured with.

Input to both: whatever :func:`pnasnet.data.decode.decode_image` accepts (path, bytes, file
object, PIL image, uint8/uint16 array), a float numpy array ``[H, W, 3]`` (or ``[H, W]``) in [0, 1]
(used as is, no 8-bit rounding), or a torch tensor ``[3, H, W]`` (uint8, or float in [0, 1]).
Only the pixels the output samples are converted to float, so cost does not grow with the input
size beyond decoding.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .decode import decode_image

__all__ = [
    "TF_SLIM_CENTRAL_FRACTION",
    "tf_central_crop_box",
    "tf_legacy_bilinear_indices",
    "tf_slim_eval_transform",
    "resize_transform",
    "load_images",
]

#: ``central_fraction`` of ``inception_preprocessing.preprocess_for_eval``.
TF_SLIM_CENTRAL_FRACTION = 0.875

_U8_SCALE = np.float32(1.0 / 255.0)  # TF convert_image_dtype: cast, then multiply by 1/max


def _to_hwc(image: Any) -> np.ndarray:
    """An image as numpy ``[H, W, 3]``: uint8, or float32 in [0, 1] for float inputs."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"a tensor image must be [3, H, W] (channels first), got {tuple(t.shape)}")
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise ValueError(f"a tensor image must be uint8 or float, got {t.dtype}")
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()  # float16 / bfloat16 have no numpy dtype; widening is exact
        image = t.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        a = image[..., None] if image.ndim == 2 else image
        if a.ndim != 3 or a.shape[2] not in (1, 3):
            raise ValueError(f"a float image must be [H, W, 3] or [H, W], got {tuple(image.shape)}")
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"image has no pixels: {tuple(image.shape)}")
        if not np.all(np.isfinite(a)):
            raise ValueError("float image has NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float image values must lie in [0, 1], got [{lo:g}, {hi:g}] (uint8 images: pass uint8)")
        a = np.broadcast_to(a, a.shape[:2] + (3,)) if a.shape[2] == 1 else a
        return a.astype(np.float32, copy=False)
    return decode_image(image)


def _to_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * _U8_SCALE
    return pixels.astype(np.float32, copy=False)


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def tf_central_crop_box(height: int, width: int, central_fraction: float = TF_SLIM_CENTRAL_FRACTION) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` exactly as ``tf.image.central_crop`` computes them."""
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(f"central_fraction must be within (0, 1], got {central_fraction}")
    if central_fraction == 1.0:
        return 0, 0, height, width
    top = int((float(height) - float(height) * central_fraction) / 2)
    left = int((float(width) - float(width) * central_fraction) / 2)
    return top, left, height - 2 * top, width - 2 * left


def tf_legacy_bilinear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lower, upper, lerp)`` per output index of TF's legacy (``half_pixel_centers=False``,
    ``align_corners=False``) bilinear resize along one axis; ``lerp`` is float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return lower, upper, (src - floor).astype(np.float32)


def tf_slim_eval_transform(
    image: Any, size: int | Sequence[int], *, central_fraction: float = TF_SLIM_CENTRAL_FRACTION
) -> torch.Tensor:
    """TF-Slim ``preprocess_for_eval`` without the [-1, 1] scaling: float32 ``[3, size, size]`` in [0, 1].

    ``size``: an int (square) or ``(height, width)``. ``central_fraction=1.0`` skips the crop.
    """
    out_h, out_w = _check_size(size)
    img = _to_hwc(image)
    top, left, ch, cw = tf_central_crop_box(img.shape[0], img.shape[1], central_fraction)
    y0, y1, dy = tf_legacy_bilinear_indices(ch, out_h)
    x0, x1, dx = tf_legacy_bilinear_indices(cw, out_w)
    y0, y1, x0, x1 = y0 + top, y1 + top, x0 + left, x1 + left
    # Gather only the needed rows, then columns; convert those pixels to float like TF.
    rows0, rows1 = img[y0], img[y1]  # [out_h, W, 3]
    tl, tr = _to_float(rows0[:, x0]), _to_float(rows0[:, x1])  # [out_h, out_w, 3]
    bl, br = _to_float(rows1[:, x0]), _to_float(rows1[:, x1])
    dxv = dx[None, :, None]
    top_row = tl + (tr - tl) * dxv
    bottom_row = bl + (br - bl) * dxv
    out = top_row + (bottom_row - top_row) * dy[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))


def resize_transform(image: Any, size: int | Sequence[int], *, antialias: bool = False) -> torch.Tensor:
    """Plain bilinear resize of the whole image to ``size`` (no crop, aspect not kept):
    float32 ``[3, size, size]`` in [0, 1]. Half-pixel centres like TF2 ``tf.image.resize``;
    ``antialias=True`` low-pass filters when shrinking (TF2 ``antialias=True`` is similar, not equal).
    """
    out_h, out_w = _check_size(size)
    img = _to_hwc(image)
    x = torch.from_numpy(np.ascontiguousarray(_to_float(img))).permute(2, 0, 1)[None]
    if x.shape[-2:] == (out_h, out_w):
        return x[0].contiguous()
    y = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias)
    return y[0].clamp_(0.0, 1.0).contiguous()


def load_images(
    sources: Iterable[Any], size: int | Sequence[int] = 331, *, transform: str = "tf_slim_eval"
) -> torch.Tensor:
    """Decode and transform several images into one float32 batch ``[N, 3, size, size]`` in [0, 1].

    ``transform``: ``"tf_slim_eval"`` (default; what the published accuracy used) or ``"resize"``.
    Raises :class:`~pnasnet.data.decode.ImageDecodeError` naming the first bad file.
    """
    fns = {"tf_slim_eval": tf_slim_eval_transform, "resize": resize_transform}
    if transform not in fns:
        raise ValueError(f"transform must be one of {sorted(fns)}, got {transform!r}")
    fn = fns[transform]
    tensors = [fn(s, size) for s in sources]
    if not tensors:
        h, w = _check_size(size)
        return torch.empty(0, 3, h, w)
    return torch.stack(tensors)
