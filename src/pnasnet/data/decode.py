"""Image decoding: any common file or array -> ``uint8`` RGB ``[H, W, 3]`` numpy array.

One output type everywhere: ``numpy.uint8``, shape ``[H, W, 3]``, C-contiguous, RGB order. That is
what TF-Slim's input pipeline works on (``tf.image.decode_jpeg`` gives uint8), and the transforms in
:mod:`pnasnet.data.transforms` turn it into float ``[0, 1]`` exactly as TensorFlow does. Float
arrays that should keep their precision can be handed to the transforms directly instead.

Conversions (all documented choices):

* **EXIF orientation** is applied (``ImageOps.exif_transpose``); a file whose EXIF block is broken
  is decoded without rotation rather than rejected.
* **Alpha** (RGBA, LA, PA, P with a transparent colour, premultiplied RGBa/La, HxWx4 arrays) is
  composited over a fixed background, **white (255, 255, 255)** by default (``background=``), with
  rounding: ``out = round((c * a + bg * (255 - a)) / 255)``. White is what a transparent logo or
  product photo is made to be seen on.
* **Grey / bilevel / palette** (L, 1, P) are expanded to RGB (grey copied to the three channels).
* **CMYK** uses Pillow's conversion (Adobe inverted CMYK JPEGs are un-inverted by Pillow's JPEG
  reader); embedded ICC profiles are not applied.
* **16-bit** (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, ``uint16`` arrays): the full range
  0..65535 is scaled to 0..255 with rounding, ``round(v / 257)`` (65535 / 257 = 255 exactly), i.e.
  the nearest 8-bit value of ``v / 65535``; never clipped.
* **32-bit integer** (mode ``I``, e.g. old Pillow's 16-bit PNGs): values within 0..65535 are taken
  as 16-bit and scaled as above; other ranges are stretched linearly from min..max to 0..255.
* **32-bit float** (mode ``F``): values within [0, 1] are scaled by 255; within [0, 255] taken as
  8-bit; anything else stretched from min..max. NaN becomes 0. Rounded to nearest.
* Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame (a PIL image passed in:
  the frame it is on).

Errors: every failure to turn the input into pixels raises :class:`ImageDecodeError` (a
``ValueError``) whose message names the source and says what is wrong: missing/unreadable file,
not an image, unsupported format, truncated or corrupt data, too many pixels (decompression bomb),
unsupported array shape or dtype. The original exception is chained as ``__cause__``.

Decompression bombs: ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, the same 89.5 Mpx as
Pillow's warning threshold) is checked from the header, before any pixel is decoded; ``None``
turns our check off. Pillow's own hard limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2) still applies at
open and is reported the same way.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_BACKGROUND", "ImageDecodeError", "ImageSource", "decode_image"]

#: Default decompression-bomb limit (pixels), Pillow's own default warning threshold.
DEFAULT_MAX_PIXELS: int = 89_478_485
#: Colour that transparent pixels are composited over.
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An input could not be decoded to an RGB image. ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode image {source}: {reason}")
        self.source = source
        self.reason = reason


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        return repr(name) if name else f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {tuple(source.shape)}>"
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)) and name:
        return repr(os.fsdecode(name))
    return f"<{type(source).__name__}>"


def _check_background(background: tuple[int, int, int]) -> np.ndarray:
    bg = np.asarray(background, dtype=np.int64)
    if bg.shape != (3,) or bg.min() < 0 or bg.max() > 255:
        raise ValueError(f"background must be three integers in 0..255, got {background!r}")
    return bg


# ---------------------------------------------------------------------------------------------
# array helpers


def _composite(rgb: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] and uint8 alpha [H,W] over a constant background, rounded."""
    a = alpha.astype(np.int32)[..., None]
    num = rgb.astype(np.int32) * a + bg.astype(np.int32) * (255 - a)
    return ((num + 127) // 255).astype(np.uint8)


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    # round(v / 257): 0 -> 0, 65535 -> 255, monotone; integer arithmetic, exact.
    v = a.astype(np.uint32)
    return ((v + 128) // 257).astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(a * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(a).astype(np.uint8)
    return _stretch(a)


def _int32_to_u8(a: np.ndarray) -> np.ndarray:
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        return _u16_to_u8(a)
    return _stretch(a)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))


def _from_array(arr: np.ndarray, name: str, bg: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageDecodeError(name, "array must be HxW, HxWx1, HxWx2, HxWx3 or HxWx4 (channels last)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(name, "array has no pixels")
    dt = arr.dtype
    if dt == np.uint8:
        u8 = arr
    elif dt == np.bool_:
        u8 = arr.astype(np.uint8) * 255
    elif dt == np.uint16:
        u8 = _u16_to_u8(arr)
    elif np.issubdtype(dt, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageDecodeError(name, "float array has NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageDecodeError(name, f"float array values must lie in [0, 1], got [{lo:g}, {hi:g}]")
        u8 = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageDecodeError(name, f"unsupported array dtype {dt} (use uint8, uint16, bool or float in [0, 1])")
    if u8.ndim == 2:
        return _gray_to_rgb(u8)
    c = u8.shape[2]
    if c == 2:
        return _composite(_gray_to_rgb(u8[..., 0]), u8[..., 1], bg)
    if c == 4:
        return _composite(u8[..., :3], u8[..., 3], bg)
    return np.ascontiguousarray(u8)


def _pil_to_rgb(img: Image.Image, name: str, bg: np.ndarray) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in ("L", "1"):
        return _gray_to_rgb(np.array(img.convert("L"), dtype=np.uint8))
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_u16_to_u8(np.asarray(img).astype(np.uint16)))
    if mode == "I":
        return _gray_to_rgb(_int32_to_u8(np.asarray(img, dtype=np.int32)))
    if mode == "F":
        return _gray_to_rgb(_float_to_u8(np.asarray(img, dtype=np.float32)))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = np.array(img.convert("RGBA"), dtype=np.uint8)
        return _composite(rgba[..., :3], rgba[..., 3], bg)
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # P, CMYK, YCbCr, RGBX, HSV, ...
    except (ValueError, OSError) as e:
        raise ImageDecodeError(name, f"cannot convert image mode {mode!r} to RGB ({e})") from e


# ---------------------------------------------------------------------------------------------


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    exif_transpose: bool = True,
) -> np.ndarray:
    """Decode ``source`` to a ``uint8`` RGB array ``[H, W, 3]``.

    ``source``: a path (``str`` / ``PathLike``), encoded file bytes, a binary file object, a PIL
    image, or a numpy array (``HxW``, ``HxWx1``, ``HxWx2`` grey+alpha, ``HxWx3``, ``HxWx4``; dtype
    ``uint8``, ``uint16`` (scaled by 1/257), ``bool``, or float in [0, 1] (x255, rounded)).
    Files: whatever Pillow reads (JPEG, PNG, WebP, GIF, BMP, TIFF, ...).

    ``max_pixels``: width x height above which the file is refused before decoding (``None``: no
    limit of ours). ``background``: RGB colour transparent pixels are composited on.
    ``exif_transpose``: apply the EXIF orientation tag (files and PIL images).

    Raises :class:`ImageDecodeError` (naming the source and the reason) for anything that cannot
    be decoded; ``TypeError`` for an argument of an unsupported type.
    """
    bg = _check_background(background)
    name = _describe(source)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    if isinstance(source, np.ndarray):
        if max_pixels is not None and source.ndim >= 2 and source.shape[0] * source.shape[1] > max_pixels:
            raise ImageDecodeError(name, f"{source.shape[1]}x{source.shape[0]} pixels exceeds max_pixels={max_pixels}")
        return _from_array(source, name, bg)

    if isinstance(source, Image.Image):
        return _decode_pil(source, name, max_pixels, bg, exif_transpose)

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            fh: Any = open(path, "rb")
        except OSError as e:
            raise ImageDecodeError(name, f"cannot read file ({e.strerror or e})") from e
        with fh:
            return _open_and_decode(fh, name, max_pixels, bg, exif_transpose)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(name, "empty input")
        return _open_and_decode(io.BytesIO(bytes(source)), name, max_pixels, bg, exif_transpose)
    if hasattr(source, "read"):
        return _open_and_decode(source, name, max_pixels, bg, exif_transpose)
    raise TypeError(
        f"decode_image: unsupported source type {type(source).__name__}; "
        "expected a path, bytes, a binary file object, a PIL image or a numpy array"
    )


def _open_and_decode(fh: Any, name: str, max_pixels: int | None, bg: np.ndarray, exif: bool) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check (below) replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"too many pixels, possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(name, "not an image, or a format Pillow cannot identify") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageDecodeError(name, f"truncated or corrupt image header ({type(e).__name__}: {e})") from e
    with img:
        return _decode_pil(img, name, max_pixels, bg, exif)


def _decode_pil(
    img: Image.Image, name: str, max_pixels: int | None, bg: np.ndarray, exif: bool
) -> np.ndarray:
    w, h = img.size
    fmt = f"{img.format} " if img.format else ""
    if w <= 0 or h <= 0:
        raise ImageDecodeError(name, f"{fmt}image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(
            name, f"{fmt}image of {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} (possible decompression bomb)"
        )
    try:
        # A freshly opened file is on its first frame; a PIL image passed in keeps its frame.
        img.load()  # decodes now, so truncation and corrupt data surface here
        if exif:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # broken EXIF block: keep the pixels as stored
                pass
        return _pil_to_rgb(img, name, bg)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"too many pixels, possible decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as e:
        what = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageDecodeError(name, f"{fmt}data is {what} ({type(e).__name__}: {e})") from e

