"""Pieces the tensor protocols share: float images in the TF-Hub signature's form, served names,
probabilities from logits."""

from __future__ import annotations

import json

import base64
import binascii

import numpy as np

from ..http_inputs import RequestRefused
from ..predictor import ImageInput
from ..settings import ServeSettings

#: The one version a server has (both protocols name versions).
VERSION = "1"


def bad_request(message: str) -> RequestRefused:
    return RequestRefused(400, message, "bad_request")


def pixel_images(array: np.ndarray, size: int, what: str) -> list[ImageInput]:
    """Images from float32 ``array`` ``[N, size, size, 3]`` with values in [0, 1], the TF-Hub
    signature's input, taken as they are (no resize); 400 for another shape, 422 outside [0, 1]."""
    if array.ndim != 4 or array.shape[1:] != (size, size, 3):
        raise bad_request(f"{what}: shape {list(array.shape)}; this model takes float images [N, {size}, {size}, 3] "
                          "with values in [0, 1] (send encoded image files to have them resized)")
    if array.size and not np.isfinite(array).all():
        raise RequestRefused(422, f"{what}: pixel values must be finite numbers in [0, 1]", "bad_image")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise RequestRefused(422, f"{what}: pixel values must be in [0, 1] (the TF-Hub signature), got "
                                  f"{array.min():g} .. {array.max():g}; divide 8-bit values by 255", "bad_image")
    return [ImageInput(b"", f"{what}[{i}]", np.ascontiguousarray(image)) for i, image in enumerate(array)]


def decode_b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise bad_request(f"{what}: expected a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what}: not valid base64") from None
    if not data:
        raise bad_request(f"{what}: empty image")
    return data


def check_count(images: list, settings: ServeSettings) -> None:
    if not images:
        raise bad_request("no image in the request")
    if len(images) > settings.max_files:
        raise RequestRefused(400, f"{len(images)} images in one request; at most {settings.max_files} (--max-files)",
                             "bad_request")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (as ``decode_top_k``), returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def json_object(raw: bytes, needs: str) -> dict:
    """The request body ``raw`` as a JSON object; 400 if it is not JSON, or not an object (the
    message says it must hold ``needs``, e.g. "'inputs'")."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"the request is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request must be a JSON object with {needs}")
    return body
