"""pnasnet's own API: ``POST /v1/classify`` and ``/v1/features`` with image files as the body (or
multipart parts), ``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics``. Errors are
``{"detail": "..."}``."""

from __future__ import annotations

from fastapi import Query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..gateway import Gateway, Route, detail_error
from ..http_inputs import parse_top_k, read_images
from ..http_outputs import ClassifyResponse, FeaturesResponse, openapi_extra, result_body
from ..predictor import CLASSIFY, FEATURES, PredictRequest


def routes(gateway: Gateway) -> list[Route]:
    settings = gateway.settings

    async def serve(request: Request, task: str, top_k: int | None) -> Response:
        async def work(deadline: float) -> dict:
            images, fields = await read_images(request, settings)
            k = parse_top_k(fields.get("top_k", top_k), 5, settings.max_top_k) if task == CLASSIFY else 5
            result = await gateway.submit(PredictRequest(task, tuple(images), k, deadline))
            return result_body(result)

        return await gateway.handle(request, work, detail_error)

    async def classify(request: Request, top_k: int | None = Query(
            None, description="classes per image, most probable first (default 5)")) -> ClassifyResponse:
        """Top classes with probabilities for each image in the request."""
        return await serve(request, CLASSIFY, top_k)

    async def features(request: Request) -> FeaturesResponse:
        """The feature vector (global-average-pooled last cell) of each image in the request."""
        return await serve(request, FEATURES, None)

    async def model_info(request: Request) -> dict:
        """The model being served: size it takes, classes, feature length, transform."""
        async def work(deadline: float) -> dict:
            return await gateway.model_info()

        return await gateway.handle(request, work, detail_error, admit=False)

    async def healthz() -> dict:
        """Liveness: the HTTP side answers."""
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        """Readiness: a model is loaded and can answer."""
        ready, details = gateway.readiness()
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    async def metrics_text() -> Response:
        """Prometheus text format."""
        payload, content_type = gateway.metrics.exposition()
        return Response(payload, media_type=content_type)

    extra = openapi_extra(settings.max_files)
    return [Route("/v1/classify", classify, ["POST"], extra), Route("/v1/features", features, ["POST"], extra),
            Route("/v1/model", model_info, ["GET"]), Route("/healthz", healthz, ["GET"]),
            Route("/readyz", readyz, ["GET"]), Route("/metrics", metrics_text, ["GET"])]
