"""Training-time image transforms: decoded image -> float32 ``[3, size, size]`` in [0, 1], random
but reproducible (every random choice comes from the ``torch.Generator`` passed in, which the
dataset seeds from the run's seed, the epoch and the image's index).

``tf-slim`` follows TF-Slim's ``inception_preprocessing.preprocess_for_train`` (fast mode), the
recipe PNASNet was trained with:

1. a random box of 10 % to 100 % of the image's area (``sample_distorted_bounding_box`` with the
   whole image as the object, ``min_object_covered=0.1``, ``area_range=(0.05, 1.0)``), aspect
   ratio (width / height) between 3/4 and 4/3, up to 100 tries, else the whole image;
2. bilinear resize of that box to ``size x size``;
3. a horizontal flip with probability 1/2;
4. colour distortion: brightness shifted by up to 32/255 and saturation scaled by 0.5 to 1.5, in
   a random order of the two, clipped to [0, 1].

The sampling follows those parameters, not TF's exact random streams (TF cannot be matched bit for
bit without its RNG). ``flip`` is the evaluation transform plus step 3; ``none`` the evaluation
transform alone.

:class:`GeometricAugmentation` adds make_image_classifier's other augmentations (Keras'
``ImageDataGenerator`` with ``rotation_range``, ``width_shift_range``, ``height_shift_range``,
``zoom_range``) to any of them: one random affine map of the ``size x size`` result about its centre,
bilinear, with the border pixels repeated outside the image (Keras' ``fill_mode="nearest"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["GeometricAugmentation", "TrainingTransform", "random_box", "tf_slim_train_transform"]

_BRIGHTNESS_DELTA = 32.0 / 255.0
_SATURATION_RANGE = (0.5, 1.5)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


def random_box(height: int, width: int, generator: torch.Generator, *, area_range=(0.05, 1.0),
               aspect_range=(0.75, 1.33), min_covered: float = 0.1, attempts: int = 100) -> tuple[int, int, int, int]:
    """``(top, left, box_height, box_width)`` of a random box inside the image, see the module doc."""
    image_area = height * width
    for _ in range(attempts):
        area = _uniform(generator, *area_range) * image_area
        aspect = _uniform(generator, *aspect_range)
        box_w = int(round(math.sqrt(area * aspect)))
        box_h = int(round(math.sqrt(area / aspect)))
        if 1 <= box_h <= height and 1 <= box_w <= width and box_h * box_w >= min_covered * image_area:
            return _randint(generator, height - box_h), _randint(generator, width - box_w), box_h, box_w
    return 0, 0, height, width


def _to_float_chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)


def _adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    # Blend with the grey image (ITU-R 601 luma), as HSV saturation scaling does to first order.
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    return grey + (image - grey) * factor


def tf_slim_train_transform(pixels: np.ndarray, size: int, generator: torch.Generator, *,
                            distort_colors: bool = True) -> torch.Tensor:
    """``pixels``: uint8 ``[H, W, 3]`` (as ``decode_image`` gives). See the module docstring."""
    top, left, box_h, box_w = random_box(pixels.shape[0], pixels.shape[1], generator)
    crop = _to_float_chw(pixels[top: top + box_h, left: left + box_w])
    image = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    if float(torch.rand((), generator=generator)) < 0.5:
        image = image.flip(-1)
    if distort_colors:
        brightness = _uniform(generator, -_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA)
        saturation = _uniform(generator, *_SATURATION_RANGE)
        if float(torch.rand((), generator=generator)) < 0.5:
            image = _adjust_saturation(image + brightness, saturation)
        else:
            image = _adjust_saturation(image, saturation) + brightness
    return image.clamp_(0.0, 1.0).contiguous()


@dataclass(frozen=True)
class GeometricAugmentation:
    """make_image_classifier's rotation, shifts and zoom (Keras ``ImageDataGenerator`` semantics),
    each off at 0:

    - ``rotation_range``: degrees, the angle drawn uniformly from ``[-r, r]``;
    - ``width_shift_range`` / ``height_shift_range``: below 1 a fraction of the side, from 1 on
      pixels; the shift drawn uniformly from ``[-w, w]``;
    - ``zoom_range``: each axis scaled by its own factor from ``[1 - z, 1 + z]`` (below 1 magnifies).

    Draws come from the image's generator (rotation, horizontal then vertical shift, the two zoom
    factors; only those that are on), after the base transform's draws."""

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    zoom_range: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.rotation_range, self.width_shift_range, self.height_shift_range, self.zoom_range))

    def matrix(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """The random ``[2, 3]`` map from output to input coordinates, both normalised to
        ``[-1, 1]`` (``F.affine_grid``'s convention, ``align_corners=False``)."""
        angle = math.radians(_uniform(generator, -self.rotation_range, self.rotation_range)) \
            if self.rotation_range else 0.0

        def shift(span: float, side: int) -> float:  # in normalised units (2 = the whole side)
            if not span:
                return 0.0
            pixels = _uniform(generator, -span, span) * (side if span < 1 else 1.0)
            return 2.0 * pixels / side

        tx, ty = shift(self.width_shift_range, width), shift(self.height_shift_range, height)
        zx, zy = ((_uniform(generator, 1 - self.zoom_range, 1 + self.zoom_range),
                   _uniform(generator, 1 - self.zoom_range, 1 + self.zoom_range)) if self.zoom_range else (1.0, 1.0))
        # input = R @ (Z @ output + t), rotating in pixel units (the aspect ratio undone around it)
        aspect = width / height
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[cos, -sin / aspect], [sin * aspect, cos]], dtype=torch.float64)
        linear = rotation @ torch.diag(torch.tensor([zx, zy], dtype=torch.float64))
        offset = rotation @ torch.tensor([tx, ty], dtype=torch.float64)
        return torch.cat([linear, offset[:, None]], dim=1).float()

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``image``: float ``[3, H, W]``; the same shape back, transformed."""
        if not self.active:
            return image
        theta = self.matrix(image.shape[-2], image.shape[-1], generator)
        grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
        out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        return out.clamp_(0.0, 1.0).contiguous()


class TrainingTransform:
    """The transform for ``augment`` (``tf-slim``, ``flip`` or ``none``) as ``f(pixels, size,
    generator)``; ``eval_transform`` names the evaluation transform (``tf-slim`` or ``resize``) that
    ``flip`` and ``none`` build on; ``geometry`` adds rotation, shifts and zoom after it. A class
    rather than a closure so that decoding worker processes can receive it whatever their start
    method."""

    def __init__(self, augment: str, eval_transform: str = "tf-slim",
                 geometry: GeometricAugmentation | None = None):
        from ..tasks.batches import TRANSFORMS

        if augment not in ("tf-slim", "flip", "none"):
            raise ValueError(f"augment must be tf-slim, flip or none, got {augment!r}")
        if eval_transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {eval_transform!r}")
        self.augment = augment
        self.eval_transform = eval_transform
        self.geometry = geometry if geometry is not None and geometry.active else None

    def __call__(self, pixels: np.ndarray, size: int, generator: torch.Generator) -> torch.Tensor:
        image = self._base(pixels, size, generator)
        return self.geometry(image, generator) if self.geometry is not None else image

    def _base(self, pixels: np.ndarray, size: int, generator: torch.Generator) -> torch.Tensor:
        from ..tasks.batches import TRANSFORMS

        if self.augment == "tf-slim":
            return tf_slim_train_transform(pixels, size, generator)
        image = TRANSFORMS[self.eval_transform](pixels, size)
        if self.augment == "flip" and float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1).contiguous()
        return image
