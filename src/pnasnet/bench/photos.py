"""Real photographs for agreement checks and int8 calibration: scikit-image's sample images,
decoded and resized as the model takes them (needs scikit-image).
"""

from __future__ import annotations



PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "cat", "camera", "moon", "coins", "clock")


# int8 calibration images: other scikit-image samples than the compared ones
CALIBRATION_PHOTOS = ("brick", "grass", "gravel", "eagle", "page", "text", "colorwheel", "logo")


def calibration_photographs(size: int):
    """:data:`CALIBRATION_PHOTOS` and their mirror images, as :func:`photographs` gives them."""
    import torch

    images, _ = photographs(size, CALIBRATION_PHOTOS)
    return torch.cat([images, images.flip(-1)])


def photographs(size: int, names=PHOTOS):
    """scikit-image's sample photographs, centre square, resized to ``size`` (bicubic), [N,3,S,S] in
    [0, 1]; grey ones repeated to RGB."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    images, found = [], []
    for name in names:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # some need a download: skipped
            continue
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        array = array[..., :3]
        h, w = array.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = Image.fromarray(array[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        found.append(name)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), found
