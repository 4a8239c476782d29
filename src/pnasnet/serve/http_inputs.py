"""Images out of an HTTP request, within the limits, or a refusal that says what is wrong.

Two ways to send images, both without any URL fetching (the server never downloads anything):

* the raw file as the body, with ``Content-Type: image/...`` or ``application/octet-stream``;
* ``multipart/form-data`` with one or more file parts (any field names; order kept) and an
  optional ``top_k`` field.

Anything else (JSON, form-urlencoded, text, no content type) is 415 with a hint. Works on any
Starlette request, so every engine adapter shares it.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from .predictor import ImageInput
from .settings import ServeSettings

RAW_TYPES_HINT = ("send the image file as the body with Content-Type: image/jpeg (image/png, ...) or "
                  "application/octet-stream, or as multipart/form-data file parts "
                  "(curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg', or curl -F file=@cat.jpg)")


class RequestRefused(Exception):
    """A request answered with ``status`` and ``message``; ``reason`` labels it in the metrics."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


def _too_large(limit: int) -> RequestRefused:
    return RequestRefused(413, f"request body larger than the limit of {limit} bytes (--max-body-bytes)", "too_large")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, stopping as soon as it passes ``limit`` (also for chunked uploads)."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except HTTPException as error:  # the framework's own body limit (max_payload_size) came first
        if error.status_code == 413:
            raise _too_large(limit) from None
        raise
    return b"".join(chunks)


async def _read_multipart(request: Request, settings: ServeSettings) -> tuple[list[ImageInput], dict[str, str]]:
    try:
        # The framework's max_payload_size caps the bytes read here (413 from its middleware).
        form = await request.form(max_files=settings.max_files, max_fields=16)
    except HTTPException as error:
        if error.status_code == 413:
            raise _too_large(settings.max_body_bytes) from None
        raise RequestRefused(400, f"malformed multipart body: {error.detail}"
                             f" (at most {settings.max_files} files, --max-files)", "bad_request") from None
    images, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            images.append(ImageInput(await value.read(), value.filename or key))
        else:
            fields[key] = value
    await form.close()
    if not images:
        raise RequestRefused(400, "multipart request has no file part: " + RAW_TYPES_HINT, "bad_request")
    return images, fields


async def read_images(request: Request, settings: ServeSettings) -> tuple[list[ImageInput], dict[str, str]]:
    """``(images, form fields)`` of ``request``; raises :class:`RequestRefused` (400, 413, 415)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise _too_large(settings.max_body_bytes)  # refused before reading a byte
    media = _media_type(request)
    if media == "multipart/form-data":
        images, fields = await _read_multipart(request, settings)
    elif media.startswith("image/") or media == "application/octet-stream":
        images, fields = [ImageInput(await _read_capped(request, settings.max_body_bytes))], {}
    else:
        shown = f"Content-Type {media!r}" if media else "no Content-Type"
        raise RequestRefused(415, f"unsupported {shown}: {RAW_TYPES_HINT}", "unsupported_media_type")
    for image in images:
        if not image.data:
            what = f"file part {image.name!r} is empty" if image.name else "empty request body"
            raise RequestRefused(400, f"{what}: {RAW_TYPES_HINT}", "empty_body")
    return images, fields


async def read_body(request: Request, settings: ServeSettings) -> bytes:
    """The whole body within ``--max-body-bytes`` (413 beyond), inflated if it is sent gzip- or
    deflate-encoded (the inflated size within the same limit); 415 for other encodings."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise _too_large(settings.max_body_bytes)  # refused before reading a byte
    body = await _read_capped(request, settings.max_body_bytes)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestRefused(415, f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none",
                             "unsupported_media_type")
    import zlib

    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, settings.max_body_bytes + 1)
    except zlib.error as error:
        raise RequestRefused(400, f"body is not valid {encoding} data: {error}", "bad_request") from None
    if len(inflated) > settings.max_body_bytes:
        raise _too_large(settings.max_body_bytes)
    return inflated


def parse_top_k(value: str | int | None, default: int, limit: int) -> int:
    """``top_k`` from a query or form field: an integer within 1..limit (422 otherwise)."""
    if value is None:
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise RequestRefused(422, f"top_k must be an integer, got {value!r}", "bad_request") from None
    if not 1 <= k <= limit:
        raise RequestRefused(422, f"top_k must be within 1..{limit}, got {k}", "bad_request")
    return k
