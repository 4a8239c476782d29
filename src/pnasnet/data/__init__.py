"""Data layer: image decoding, evaluation transforms, ImageNet labels.

    from pnasnet.data import decode_image, tf_slim_eval_transform, load_images, decode_top_k
    x = load_images(["cat.jpg", "dog.png"], 331)   # float32 [2, 3, 331, 331] in [0, 1], TF-Slim eval
    decode_top_k(model.classify(x), k=5)          # [[(index, name, probability), ...], ...]

Layer: data. It may import only the model and the top-level helpers (``atomic_files``,
``file_locks``, ``version``).
"""

from .decode import DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .labels import decode_top_k, imagenet_labels, imagenet_wnids
from .transforms import (
    TF_SLIM_CENTRAL_FRACTION,
    load_images,
    resize_transform,
    tf_central_crop_box,
    tf_slim_eval_transform,
)

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "TF_SLIM_CENTRAL_FRACTION",
    "decode_image",
    "decode_top_k",
    "imagenet_labels",
    "imagenet_wnids",
    "load_images",
    "resize_transform",
    "tf_central_crop_box",
    "tf_slim_eval_transform",
]
