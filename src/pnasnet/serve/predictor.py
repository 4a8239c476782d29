"""The engine-neutral core of the server: a batch of requests in, one result per request out.

``Predictor.predict(requests)`` decodes every image of every request (a few threads; Pillow
releases the GIL), applies the evaluation transform, runs the model on the images that decoded,
grouped by task and at most ``max_images_per_call`` at a time, and hands each request exactly its
own outputs. A request with an image that cannot be decoded gets an error result naming the image
and the reason; the other requests of the batch are computed as if it had not been there.

The model is any object with the PNASNet inference interface: ``classify(x)``, ``features(x)``,
``num_classes``, ``num_features``, ``expected_image_size``, ``min_image_size`` and optionally
``labels``. That is the one place a faster inference path plugs in: build it, pass it as
``model``. The serving engines (LitServe, Ray Serve) only move requests and results around.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..data import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, decode_top_k
from ..tasks.batches import TRANSFORMS
from ..tasks.inference import model_image_size

__all__ = ["CLASSIFY", "FEATURES", "INFO", "LOGITS", "LOGITS_AND_FEATURES", "BatchInfo", "ImageInput", "PredictRequest", "PredictResult",
           "Predictor", "class_labels"]

CLASSIFY, FEATURES, INFO = "classify", "features", "info"
#: The raw classifier outputs (float32 rows), plus the top ``top_k`` classes when ``top_k`` > 0: what
#: the Open Inference Protocol and TF Serving adapters answer with.
LOGITS = "logits"
# The logits and the feature vectors of the same images from one pass (the Open Inference Protocol
# asks for both at once): ``outputs`` are the logits, ``features`` the vectors.
LOGITS_AND_FEATURES = "logits+features"

IMAGE_TASKS = (CLASSIFY, FEATURES, LOGITS, LOGITS_AND_FEATURES)

#: Error kinds a result can carry (the HTTP layer maps them to status codes).
BAD_IMAGE, NOT_SUPPORTED, EXPIRED = "bad_image", "not_supported", "expired"


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: an encoded file (``data``), or ``pixels``, a float32 ``[H, W, 3]``
    array in [0, 1] at the served size (the TF-Hub signature's input, taken as it is: no resize, no
    crop). ``name`` is the multipart file name or the protocol's label for the image, if any."""

    data: bytes
    name: str | None = None
    pixels: Any = None


@dataclass(frozen=True)
class PredictRequest:
    """``task``: CLASSIFY (top ``top_k`` classes per image), FEATURES (vectors) or INFO (no images:
    a description of the model). ``deadline``: ``time.monotonic()`` after which nobody waits for
    the answer (a system-wide clock on Linux, so the HTTP process can set it for the worker)."""

    task: str
    images: tuple[ImageInput, ...] = ()
    top_k: int = 5
    deadline: float | None = None


@dataclass
class BatchInfo:
    """The model batch a request was computed in (for metrics): requests and images in it, seconds
    of model time, and whether this result is the batch's first (so a batch is counted once)."""

    requests: int
    images: int
    model_seconds: float
    first: bool


@dataclass
class PredictResult:
    """``outputs``: per image, ``[(index, label, probability), ...]`` (classify) or a float32 vector
    (features, logits); empty when ``error`` (a message naming the image) is set. ``top_k``: for
    LOGITS with ``top_k`` > 0, the classify lists beside the logits. ``features``: for
    LOGITS_AND_FEATURES, the feature vectors beside the logits in ``outputs``."""

    task: str
    names: list[str | None] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    top_k: list[Any] | None = None
    features: list[Any] | None = None
    error: str | None = None
    error_kind: str | None = None
    info: dict | None = None
    batch: BatchInfo | None = None


def class_labels(model) -> list[str] | None:
    """Names of the classifier's outputs: a model directory's labels, else ImageNet's for 1001/1000
    classes (None: ``decode_top_k``'s default), else the class numbers."""
    labels = getattr(model, "labels", None)
    if labels is None and model.num_classes not in (1000, 1001):
        labels = [str(i) for i in range(model.num_classes)]
    return labels


def _device_of(model) -> torch.device:
    if isinstance(getattr(model, "device", None), torch.device):  # a wrapped fast inference model
        return model.device
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


class Predictor:
    """Decode + transform + batch + model + per-request results, for one loaded model.

    Args:
        model: a model in eval mode with the PNASNet inference interface (see the module doc).
        image_size: side of the model input (default: the model's own).
        transform: "tf-slim" (central crop 0.875 + TF bilinear; the published accuracy) or "resize".
        max_pixels: decoded images larger than this are refused (decompression bombs).
        max_images_per_call: images given to the model at once (multi-image requests are split).
        decode_threads: threads that decode the images of a batch.
        description: extra facts for ``info()`` (model name, weights).
    """

    def __init__(self, model, *, image_size: int | None = None, transform: str = "tf-slim",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_images_per_call: int = 8,
                 decode_threads: int = 2, description: dict | None = None):
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
        self.model = model
        self.size = model_image_size(model, image_size)
        self.transform_name = transform
        self.transform = TRANSFORMS[transform]
        self.max_pixels = max_pixels
        self.max_images_per_call = max(1, int(max_images_per_call))
        self.labels = class_labels(model) if model.num_classes else None
        self.device = _device_of(model)
        self.description = dict(description or {})
        self._decoder = ThreadPoolExecutor(decode_threads, "pnasnet-decode") if decode_threads > 1 else None

    def info(self) -> dict:
        """What the model is and takes, for clients (``GET /v1/model``)."""
        labels = ("imagenet" if self.labels is None and self.model.num_classes else
                  "model" if getattr(self.model, "labels", None) is not None else
                  "class numbers" if self.model.num_classes else None)
        return {**self.description, "image_size": self.size, "transform": self.transform_name,
                "num_classes": int(self.model.num_classes), "num_features": int(self.model.num_features),
                "labels": labels, "device": str(self.device), "max_images_per_call": self.max_images_per_call}

    # ----------------------------------------------------------------------------------- predict
    def predict(self, requests: Sequence[PredictRequest]) -> list[PredictResult]:
        """One result per request, in order. Raises only if the model itself fails."""
        results = [PredictResult(r.task, [i.name for i in r.images]) for r in requests]
        self._refuse_expired(requests, results)
        pixels = self._decode(requests, results)
        images_run, model_seconds = 0, 0.0
        classes = int(self.model.num_classes)
        members = [i for i, r in enumerate(requests) if r.task in IMAGE_TASKS and results[i].error is None]
        if not classes:
            for i in [i for i in members if requests[i].task != FEATURES]:
                self._refuse(results[i], NOT_SUPPORTED, "this is a feature-vector model: it has no "
                                                        "classifier; use /v1/features")
            members = [i for i in members if requests[i].task == FEATURES]
        if members:
            # Every task of the batch in one model call: with a classifier, logits and features come
            # from the same pass (the classifier is one small matrix product on the features).
            compute = self._logits_and_features if classes else self.model.features
            deadlines = [requests[i].deadline for i in members]
            start = time.perf_counter()
            outputs = self._run(compute, [x for i in members for x in pixels[i]],
                                None if None in deadlines else max(deadlines))
            model_seconds += time.perf_counter() - start
            if outputs is None:  # every request of the batch expired while it ran: stopped early
                for i in members:
                    self._refuse(results[i], EXPIRED, "expired while computing")
                members = []
            else:
                images_run += len(outputs)
            offset = 0
            for i in members:
                rows = outputs[offset: offset + len(pixels[i])]
                offset += len(pixels[i])
                self._fill(results[i], requests[i], rows[:, :classes], rows[:, classes:])
        for i, request in enumerate(requests):
            if request.task == INFO:
                results[i].info = self.info()
            elif request.task not in IMAGE_TASKS:
                self._refuse(results[i], NOT_SUPPORTED, f"unknown task {request.task!r}")
        for position, result in enumerate(results):
            result.batch = BatchInfo(len(requests), images_run, model_seconds, position == 0)
        return results

    def _refuse_expired(self, requests: Sequence[PredictRequest], results: list[PredictResult]) -> None:
        now = time.monotonic()
        for request, result in zip(requests, results):
            if request.deadline is not None and now > request.deadline:
                self._refuse(result, EXPIRED, "expired before computing")

    @staticmethod
    def _refuse(result: PredictResult, kind: str, message: str) -> None:
        result.error, result.error_kind, result.outputs = message, kind, []

    def _decode(self, requests: Sequence[PredictRequest], results: list[PredictResult]) -> list[list[torch.Tensor]]:
        """Model inputs per request; a request with any undecodable image gets its error instead."""
        jobs = [(i, image) for i, r in enumerate(requests) if r.task in IMAGE_TASKS for image in r.images]
        done = (self._decoder.map(self._decode_one, [image for _, image in jobs]) if self._decoder and len(jobs) > 1
                else map(self._decode_one, [image for _, image in jobs]))
        pixels: list[list[torch.Tensor]] = [[] for _ in requests]
        for (i, image), (tensor, reason) in zip(jobs, done):
            if reason is not None and results[i].error is None:
                label = f"{image.name}: " if image.name else ""
                self._refuse(results[i], BAD_IMAGE, f"{label}{reason}")
            elif reason is None:
                pixels[i].append(tensor)
        for i, r in enumerate(requests):
            if r.task in IMAGE_TASKS and not r.images and results[i].error is None:
                self._refuse(results[i], BAD_IMAGE, "no image in the request")
        return pixels

    def _decode_one(self, image: ImageInput) -> tuple[torch.Tensor | None, str | None]:
        if image.pixels is not None:  # already checked by the protocol adapter: [size, size, 3] in [0, 1]
            pixels = torch.as_tensor(image.pixels, dtype=torch.float32)
            if tuple(pixels.shape) != (self.size, self.size, 3):
                return None, (f"pixel array of shape {list(pixels.shape)}; this model takes "
                              f"[{self.size}, {self.size}, 3]")
            return pixels.permute(2, 0, 1).contiguous(), None
        try:
            return self.transform(decode_image(image.data, max_pixels=self.max_pixels), self.size), None
        except ImageDecodeError as error:
            return None, f"cannot decode image: {error.reason}"

    def _fill(self, result: PredictResult, request: PredictRequest, logits: torch.Tensor,
              features: torch.Tensor) -> None:
        """``result``'s outputs for ``request``'s task from its images' rows."""
        if request.task == CLASSIFY:
            result.outputs = decode_top_k(logits, request.top_k, self.labels)
            return
        result.outputs = list((features if request.task == FEATURES else logits).numpy())
        if request.task == LOGITS_AND_FEATURES:
            result.features = list(features.numpy())
        if request.task != FEATURES and request.top_k > 0:
            result.top_k = decode_top_k(logits, request.top_k, self.labels)

    def _logits_and_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[logits | features]`` per image, from one pass through the network."""
        features, logits = self.model.features_and_logits(images)
        return torch.cat([logits.float(), features.float()], 1)

    def _run(self, compute, images: list[torch.Tensor], deadline: float | None) -> torch.Tensor | None:
        """``compute`` over ``images``, ``max_images_per_call`` at a time; float32 on the CPU.
        None if ``deadline`` passes before the last call (the rest is not computed)."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(images), self.max_images_per_call):
                if deadline is not None and time.monotonic() > deadline:
                    return None
                batch = torch.stack(images[start: start + self.max_images_per_call]).to(self.device)
                outputs.append(compute(batch).float().cpu())
        return torch.cat(outputs)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.shutdown(wait=False)

