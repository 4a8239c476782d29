"""Image files for the inference tests: real photographs from scikit-image's bundled data (in its
wheel, nothing downloaded) and a set of broken files, each with the reason it is broken."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def write_photos(folder: Path, names=PHOTO_NAMES, fmt: str = "JPEG") -> list[Path]:
    """The named scikit-image photographs as ``NAME.jpg`` (or ``.png``), sorted by name."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    paths = []
    for name in names:
        path = folder / f"{name}{suffix}"
        Image.fromarray(photo(name)).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        paths.append(path)
    return sorted(paths)


def write_small_crops(folder: Path, count: int, side: int = 40) -> list[Path]:
    """``count`` distinct small JPEGs cut from the photographs (cheap to decode)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [photo(n) for n in PHOTO_NAMES]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        top, left = (7 * i) % (image.shape[0] - side), (11 * i) % (image.shape[1] - side)
        path = folder / f"crop_{i:03d}.jpg"
        Image.fromarray(image[top: top + side, left: left + side]).save(path, quality=90)
        paths.append(path)
    return paths


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and header announcing ``width x height`` RGB pixels, with one tiny
    compressed row: a decompression bomb as far as the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


def write_mixed_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Good images (two photographs, a PNG named ``.jpg``, a grey PNG in a subfolder) and broken
    files (empty, truncated JPEG, text named ``.png``, random bytes, a bomb header), plus a
    ``.txt`` file a folder search skips. Returns ``(good paths, bad paths)``, each sorted."""
    good = write_photos(folder, ("astronaut", "chelsea"))
    png_named_jpg = folder / "really_a_png.jpg"
    Image.fromarray(photo("coffee")).save(png_named_jpg, "PNG")
    (folder / "sub").mkdir()
    grey = folder / "sub" / "camera.png"
    Image.fromarray(photo("camera")).save(grey)
    good += [png_named_jpg, grey]

    jpeg = io.BytesIO()
    Image.fromarray(photo("rocket")).save(jpeg, "JPEG", quality=90)
    bad = {
        folder / "empty.jpg": b"",
        folder / "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 3],
        folder / "text_named.png": b"this is a text file, not a picture\n",
        folder / "noise.webp": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        folder / "sub" / "bomb.png": huge_png_header(),
    }
    for path, content in bad.items():
        path.write_bytes(content)
    (folder / "notes.txt").write_text("not an image extension: never collected from a folder\n")
    return sorted(good), sorted(bad)
