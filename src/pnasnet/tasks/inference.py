"""Classify images and compute feature vectors for many files, in batches.

The model runs under ``torch.inference_mode()`` on the device its parameters are on, one batch at a
time, while worker processes decode the next batches (:mod:`pnasnet.tasks.batches`). Inputs that
cannot be read come back as results with an ``error`` instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..data import DEFAULT_MAX_PIXELS, decode_top_k
from ..model import PNASNet
from .batches import DecodedBatch, default_workers, iter_image_batches
from .progress import Progress
from .rows import RowBlock

__all__ = ["DEFAULT_BATCH_SIZE", "Classification", "ImageFeatures", "classify_paths", "feature_blocks",
           "iter_features", "load_calibration_images", "model_image_size", "prepare_model", "run_model"]

DEFAULT_BATCH_SIZE = 16


@dataclass
class Classification:
    """``top_k``: ``(class index, label, probability)``, most probable first; empty on error."""

    path: str
    top_k: list[tuple[int, str, float]]
    error: str | None = None


@dataclass
class ImageFeatures:
    """``vector``: float32 ``[num_features]``, or None with ``error`` saying why."""

    path: str
    vector: np.ndarray | None
    error: str | None = None


def model_image_size(model: PNASNet, image_size: int | None) -> int:
    """The side images are resized to: ``image_size``, or the size the model was trained at."""
    size = model.expected_image_size[0] if image_size is None else int(image_size)
    if size < model.min_image_size:
        raise ValueError(f"image size {size} is below the {model.config.name} minimum of {model.min_image_size}")
    return size


def _device_of(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)  # an optimized model (pnasnet.inference) says where it runs
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def prepare_model(model: torch.nn.Module, backend: str = "auto", precision: str = "float32", *,
                  image_size: int | None = None, in_place: bool = False,
                  calibration: torch.Tensor | None = None) -> torch.nn.Module:
    """The model the batch tasks run: ``model`` on ``backend`` at ``precision`` (see
    :func:`pnasnet.inference.for_inference`; "auto" is the exact inference form on the CPU).
    ``in_place``: convert ``model`` itself rather than a copy (saves a copy of the weights; the
    model is then the inference form only). ``calibration``: images for precision "int8" (see
    :func:`load_calibration_images`)."""
    from ..inference import for_inference

    size = model_image_size(model, image_size)
    return for_inference(model, backend, precision, image_size=size, in_place=in_place, calibration=calibration)


def load_calibration_images(inputs: Sequence[str], image_size: int, *, count: int = 32,
                            transform: str = "tf-slim") -> torch.Tensor:
    """Up to ``count`` images from ``inputs`` (files, folders, globs, @lists, as the commands take
    them), spread evenly over the sorted list so that every folder is represented, decoded and
    transformed as the run will do it: the calibration set of precision "int8"."""
    from ..data import load_images
    from .inputs import expand_inputs

    if count < 1:
        raise ValueError(f"the calibration image count must be at least 1, got {count}")
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError(f"no calibration images found in {' '.join(map(str, inputs))}")
    step = len(paths) / min(count, len(paths))
    chosen = [paths[int(i * step)] for i in range(min(count, len(paths)))]
    return load_images(chosen, image_size, transform={"tf-slim": "tf_slim_eval", "resize": "resize"}[transform])


def run_model(model: PNASNet, paths: Sequence[str], compute: Callable[[torch.Tensor], torch.Tensor], *,
              image_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
              transform: str = "tf-slim", max_pixels: int | None = DEFAULT_MAX_PIXELS,
              progress: Progress | None = None, already_done: int = 0) -> Iterator[tuple[DecodedBatch, torch.Tensor]]:
    """``(batch, compute(batch.images))`` for each batch of ``paths``, the output on the CPU.

    ``image_size``: default the model's; ``batch_size``: inputs per batch; ``workers``: decoding
    processes (default :func:`~pnasnet.tasks.batches.default_workers`, 0 = in this process);
    ``transform``: ``"tf-slim"`` (central crop + resize, the published accuracy) or ``"resize"``;
    ``max_pixels``: decompression-bomb limit; ``progress``: started with ``already_done +
    len(paths)`` inputs of which ``already_done`` are finished, then advanced after each batch.
    """
    size = model_image_size(model, image_size)
    device = _device_of(model)
    workers = default_workers(device) if workers is None else workers
    if progress is not None:
        progress.start(already_done + len(paths), already_done)
    batches = iter_image_batches(paths, size, batch_size=batch_size, workers=workers, transform=transform,
                                 max_pixels=max_pixels, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()  # inference statistics even if the caller was fine-tuning; restored at the end
    try:
        for batch in batches:
            if batch.images.shape[0]:
                with torch.inference_mode():
                    output = compute(batch.images.to(device, non_blocking=True)).float().cpu()
            else:
                output = torch.empty(0)
            yield batch, output
            if progress is not None:  # after the caller has used the batch: "done" means saved or shown
                progress.advance(batch.paths, batch.errors)
    finally:
        model.train(was_training)


def classify_paths(model: PNASNet, paths: Sequence[str], *, top_k: int = 5, labels: Sequence[str] | None = None,
                   backend: str = "auto", precision: str = "float32", in_place: bool = False,
                   calibration: torch.Tensor | None = None, **options) -> Iterator[Classification]:
    """Top-``top_k`` classes of each image, lazily, in input order (one result per path).

    ``labels`` default to the ImageNet names for 1001/1000 classes and to the class numbers for
    other heads. ``backend``, ``precision``, ``in_place``, ``calibration``: how the model runs
    (:func:`prepare_model`; default the exact fast path). ``options``: ``image_size``, ``batch_size``, ``workers``,
    ``transform``, ``max_pixels``, ``progress``, as in :func:`run_model`.
    """
    if model.num_classes == 0:  # checked now, not when the first result is asked for
        raise ValueError(f"{model.config.name} feature-vector models have no classifier; use features")
    if labels is None:
        labels = getattr(model, "labels", None)  # a model directory's labels.txt
    if labels is None and model.num_classes not in (1000, 1001):
        labels = [str(i) for i in range(model.num_classes)]
    runnable = prepare_model(model, backend, precision, image_size=options.get("image_size"), in_place=in_place,
                             calibration=calibration)
    return _classifications(run_model(runnable, paths, runnable.classify, **options), top_k, labels)


def _classifications(outputs, top_k: int, labels: Sequence[str] | None) -> Iterator[Classification]:
    for batch, logits in outputs:
        decoded = iter(decode_top_k(logits, top_k, labels) if len(logits) else [])
        for path, error in zip(batch.paths, batch.errors):
            yield Classification(path, [], error) if error else Classification(path, next(decoded))


def feature_blocks(model: PNASNet, paths: Sequence[str], *, backend: str = "auto", precision: str = "float32",
                   in_place: bool = False, calibration: torch.Tensor | None = None,
                   **options) -> Iterator[RowBlock]:
    """Feature vectors per batch as :class:`~pnasnet.tasks.rows.RowBlock` (``backend``,
    ``precision``, ``in_place`` as in :func:`classify_paths`, other options as in :func:`run_model`)."""
    model = prepare_model(model, backend, precision, image_size=options.get("image_size"), in_place=in_place,
                          calibration=calibration)
    for batch, vectors in run_model(model, paths, model.features, **options):
        features = vectors.numpy() if len(vectors) else np.empty((0, model.num_features), np.float32)
        yield RowBlock(batch.paths, batch.errors, features)


def iter_features(model: PNASNet, paths: Sequence[str], **options) -> Iterator[ImageFeatures]:
    """The feature vector of each image, lazily, in input order (one result per path); options as
    in :func:`feature_blocks`. To write them to a file, resumably, use :func:`extract_features`."""
    for block in feature_blocks(model, paths, **options):
        good = iter(block.features)
        for path, error in zip(block.paths, block.errors):
            yield ImageFeatures(path, None, error) if error else ImageFeatures(path, next(good))
