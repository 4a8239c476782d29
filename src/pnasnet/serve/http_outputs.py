"""JSON bodies of the answers, their schemas (for the OpenAPI document), and error statuses."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .predictor import BAD_IMAGE, CLASSIFY, EXPIRED, NOT_SUPPORTED, PredictResult

#: HTTP status of a result that carries an error, by its kind.
ERROR_STATUS = {BAD_IMAGE: 422, NOT_SUPPORTED: 400, EXPIRED: 504}


class TopKEntry(BaseModel):
    index: int = Field(description="output column (for the 1001 ImageNet logits, 0 = background)")
    label: str
    probability: float = Field(description="softmax over all classes")


class ClassifyResult(BaseModel):
    name: str | None = Field(None, description="multipart file name (null for a raw body)")
    top_k: list[TopKEntry]


class ClassifyResponse(BaseModel):
    results: list[ClassifyResult] = Field(description="one entry per image, in request order")


class FeaturesResult(BaseModel):
    name: str | None = Field(None, description="multipart file name (null for a raw body)")
    features: list[float]


class FeaturesResponse(BaseModel):
    num_features: int
    results: list[FeaturesResult] = Field(description="one entry per image, in request order")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong, and for bad input how to fix it")


def result_body(result: PredictResult) -> dict:
    """The JSON answer for a successful classify or features result."""
    if result.task == CLASSIFY:
        return {"results": [{"name": name, "top_k": [{"index": i, "label": label, "probability": p}
                                                      for i, label, p in top]}
                            for name, top in zip(result.names, result.outputs)]}
    vectors = [v.tolist() for v in result.outputs]
    return {"num_features": len(vectors[0]) if vectors else 0,
            "results": [{"name": name, "features": v} for name, v in zip(result.names, vectors)]}


_ERRORS = {
    400: "bad request: empty body, no file part, or an operation this model does not have",
    401: "missing or wrong API key",
    413: "body larger than --max-body-bytes",
    415: "unsupported Content-Type (no JSON, no URLs: send the image bytes)",
    422: "an image that cannot be decoded (not an image, truncated, corrupt, more than --max-pixels) "
         "or a bad top_k",
    503: "queue full (--max-queue); retry after the Retry-After seconds",
    504: "no answer within --timeout",
}

_IMAGE_BODY = {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {
        "type": "object",
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                "description": "one or more image files (any field name)"},
                       "top_k": {"type": "integer", "description": "classify only; overrides the query"}}}},
}


def openapi_extra(max_files: int) -> dict:
    """What FastAPI cannot see from the endpoint signatures: the image body and the error answers."""
    error = {"application/json": {"schema": ErrorResponse.model_json_schema()}}
    return {
        "requestBody": {"required": True, "content": _IMAGE_BODY,
                        "description": f"an image file as the body, or up to {max_files} multipart file parts"},
        "responses": {str(code): {"description": text, "content": error} for code, text in _ERRORS.items()},
    }
