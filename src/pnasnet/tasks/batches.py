"""Batches of decoded images, decoded in worker processes while the model runs.

``iter_image_batches(paths, size)`` yields :class:`DecodedBatch` objects in input order. Decoding
and the evaluation transform run in a ``torch.utils.data.DataLoader`` with ``workers`` processes,
which prepare the next batches while the caller runs the model on the current one. A file that
cannot be decoded does not stop anything: it comes back in its batch with the reason, and the
batch's tensor holds only the images that decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, resize_transform, tf_slim_eval_transform

__all__ = ["TRANSFORMS", "DecodedBatch", "ImageFileDataset", "default_workers", "iter_image_batches"]

#: Preprocessing by name: ``tf-slim`` (central crop 0.875 + TF bilinear; reproduces the published
#: accuracy) or ``resize`` (plain bilinear resize of the whole image, as the TF-Hub pages ask).
TRANSFORMS = {"tf-slim": tf_slim_eval_transform, "resize": resize_transform}


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decode processes to use by default. On a CPU the model is the bottleneck by far (one worker
    decodes and crops far more images per second than PNASNet classifies), so a couple of workers
    keep it fed without taking its cores; a GPU needs many more to keep up. ``0`` (decode in this
    process) on a single-core machine."""
    cpus = os.cpu_count() or 1
    if cpus <= 1:
        return 0
    if torch.device(device).type == "cpu":
        return min(2, cpus - 1)
    return min(8, cpus - 1)


@dataclass
class DecodedBatch:
    """Consecutive inputs: ``paths[i]`` decoded unless ``errors[i]`` says why not; ``images`` holds
    the decoded ones, in order, as float32 ``[n_decoded, 3, H, W]`` in [0, 1]."""

    paths: list[str]
    errors: list[str | None]
    images: torch.Tensor

    @property
    def decoded_paths(self) -> list[str]:
        return [p for p, e in zip(self.paths, self.errors) if e is None]

    def __len__(self) -> int:
        return len(self.paths)

    def pin_memory(self) -> "DecodedBatch":
        # called by the DataLoader's pinning thread when pin_memory=True (faster copies to a GPU)
        return DecodedBatch(self.paths, self.errors, self.images.pin_memory())


class ImageFileDataset(Dataset):
    """Item ``i``: ``(path, image tensor [3, H, W] or None, error reason or None)``."""

    def __init__(self, paths: Sequence[str], size: int | tuple[int, int], *, transform: str = "tf-slim",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
        self.paths = list(paths)
        self.size = size
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | None, str | None]:
        path = self.paths[index]
        try:
            pixels = decode_image(path, max_pixels=self.max_pixels)
            return path, TRANSFORMS[self.transform](pixels, self.size), None
        except ImageDecodeError as error:
            return path, None, error.reason
        except Exception as error:  # noqa: BLE001 - one bad input must never end the run
            return path, None, f"{type(error).__name__}: {error}"


def _collate(items: list[tuple[str, torch.Tensor | None, str | None]]) -> DecodedBatch:
    images = [image for _, image, _ in items if image is not None]
    stacked = torch.stack(images) if images else torch.empty(0)
    return DecodedBatch([p for p, _, _ in items], [e for _, _, e in items], stacked)


def iter_image_batches(paths: Sequence[str], size: int | tuple[int, int], *, batch_size: int = 32,
                       workers: int | None = None, transform: str = "tf-slim",
                       max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       pin_memory: bool = False) -> Iterator[DecodedBatch]:
    """Decode ``paths`` in order into batches of ``batch_size`` inputs (the last may be shorter),
    with ``workers`` processes (default :func:`default_workers`; 0 decodes in this process)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    dataset = ImageFileDataset(paths, size, transform=transform, max_pixels=max_pixels)
    if not len(dataset):
        return iter(())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=pin_memory,
                        # two batches in flight per worker: enough to hide decoding, little memory
                        prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    return iter(loader)
