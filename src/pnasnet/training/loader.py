"""Batches of augmented training images for full fine-tuning, reproducible and resumable.

An epoch's order is a permutation drawn from its own generator (run seed, "order", epoch), cut into
``max(1, n // batch_size)`` batches (the last partial batch is dropped, as Keras'
``steps_per_epoch = n // batch_size`` does; fewer images than a batch make one smaller batch). Image
``i`` of epoch ``e`` is augmented with a generator seeded by (run seed, "augment", e, i), so a batch
comes out the same whichever worker process decodes it and whether or not the run was resumed
part-way through the epoch.
"""

from __future__ import annotations

import signal
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .augment import TrainingTransform
from .dataset import LabeledImage
from .rng import generator_for

__all__ = ["AugmentedImages", "epoch_batches", "find_unreadable", "training_batches"]


def epoch_batches(num_images: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The image indices of each batch of ``epoch``, in order."""
    order = torch.randperm(num_images, generator=generator_for(seed, "order", epoch)).tolist()
    steps = max(1, num_images // batch_size)
    return [order[i * batch_size: (i + 1) * batch_size] for i in range(steps)]


class AugmentedImages(Dataset):
    """Item ``(epoch, index)``: ``(image [3, size, size] in [0, 1], label)``."""

    def __init__(self, images: Sequence[LabeledImage], size: int, transform: TrainingTransform, seed: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.images = list(images)
        self.size = size
        self.transform = transform
        self.seed = seed
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        image = self.images[index]
        pixels = decode_image(image.path, max_pixels=self.max_pixels)
        return self.transform(pixels, self.size, generator_for(self.seed, "augment", epoch, index)), image.label


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group. The main process finishes its step, saves and stops
    # (see ``interrupt``); a worker that died of the signal would break that step instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_batches(dataset: AugmentedImages, batches: Sequence[Sequence[int]], epoch: int, *,
                     workers: int, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` for each of ``batches`` (lists of indices into ``dataset``), decoded and
    augmented in ``workers`` processes."""
    if not batches:
        return iter(())
    plan = [[(epoch, i) for i in batch] for batch in batches]
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=workers, pin_memory=pin_memory,
                        worker_init_fn=_ignore_sigint if workers else None,
                        prefetch_factor=2 if workers else None, persistent_workers=False,
                        # its own generator: iterating a DataLoader would otherwise draw from the global
                        # RNG, which a resumed run must find exactly where the checkpoint left it
                        generator=torch.Generator())
    return iter(loader)


class _DecodeCheck(Dataset):
    def __init__(self, paths: Sequence[str], max_pixels: int | None):
        self.paths = list(paths)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, str | None]:
        path = self.paths[index]
        try:
            decode_image(path, max_pixels=self.max_pixels)
            return path, None
        except ImageDecodeError as error:
            return path, error.reason
        except Exception as error:  # noqa: BLE001 - one bad file must not end the run
            return path, f"{type(error).__name__}: {error}"


def _as_list(items: list) -> list:
    return items


def find_unreadable(paths: Sequence[str], *, workers: int, max_pixels: int | None = DEFAULT_MAX_PIXELS
                    ) -> list[tuple[str, str]]:
    """``(path, reason)`` of each file that does not decode (fully decoded, in ``workers`` processes)."""
    if not paths:
        return []
    loader = DataLoader(_DecodeCheck(paths, max_pixels), batch_size=16, num_workers=workers,
                        collate_fn=_as_list, generator=torch.Generator())
    return [(path, reason) for batch in loader for path, reason in batch if reason is not None]
