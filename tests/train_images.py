"""Small real image sets for the training tests, cut from photographs that ship with scikit-image
(``skimage.data``): the texture photographs ``brick``, ``grass`` and ``gravel`` (512 x 512 grey).

Each class is one photograph cut into a grid of non-overlapping tiles, so no two images share a
pixel and a validation tile is content the model has not seen in training; recognising the class
means recognising the texture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TEXTURES = ("brick", "grass", "gravel")


def texture_tiles(name: str, grid: int) -> list[np.ndarray]:
    import skimage.data

    photo = getattr(skimage.data, name)()
    side = min(photo.shape[:2]) // grid
    return [photo[r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(grid) for c in range(grid)]


def make_texture_folder(root: Path, *, classes=TEXTURES, grid: int = 4, per_class: int | None = None,
                        tile_size: int | None = None) -> Path:
    """``root/<texture>/<texture>_<i>.png`` (every other one ``.jpg``), ``grid**2`` tiles per class
    (or the first ``per_class``), resized to ``tile_size`` if given. Returns ``root``."""
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        tiles = texture_tiles(name, grid)[:per_class]
        for i, tile in enumerate(tiles):
            image = Image.fromarray(tile)
            if tile_size:
                image = image.resize((tile_size, tile_size), Image.BILINEAR)
            image.save(folder / f"{name}_{i:02d}.{'jpg' if i % 2 else 'png'}")
    return root
