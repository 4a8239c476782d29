"""The HTTP side of a server, engine-neutral: admission, deadlines, API key, metrics, and the one
call that hands a :class:`PredictRequest` to the engine and waits for its result.

Every protocol adapter (:mod:`pnasnet.serve.protocols`) answers through a :class:`Gateway`, and every
engine builds one around its own ``submit`` (LitServe: its request queue to the worker processes;
Ray Serve: the replica's ``@serve.batch`` method). So the limits behave the same on every engine and
in every protocol; only the shape of an error body differs (each protocol's own).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .http_inputs import RequestRefused
from .http_outputs import ERROR_STATUS
from .metrics import ServerMetrics
from .predictor import INFO, PredictRequest, PredictResult
from .settings import ServeSettings

#: ``error(status, message, headers)`` -> the response a protocol answers an error with.
ErrorShape = Callable[[int, str, "dict[str, str] | None"], Response]


def detail_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """pnasnet's own API (and FastAPI's): ``{"detail": "..."}``."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def error_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Open Inference Protocol and TF Serving: ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Gateway:
    """Shared request handling for one HTTP process (LitServe) or one replica (Ray Serve).

    Args:
        settings: limits (``max_queue``, ``timeout_s``, ``api_key``, ...).
        metrics: where requests, refusals and batches are counted.
        submit: ``await submit(request)`` -> the engine's :class:`PredictResult` for it; raises
            :class:`RequestRefused` when the engine cannot answer (worker failure, ...).
        readiness: ``() -> (ready, details)``: whether a model is loaded and can answer.
    """

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics,
                 submit: Callable[[PredictRequest], Awaitable[PredictResult]],
                 readiness: Callable[[], tuple[bool, dict]]):
        self.settings = settings
        self.metrics = metrics
        self._submit = submit
        self._readiness = readiness
        self.in_flight = 0
        self._recent_latency = 1.0  # seconds, moving average: the Retry-After hint
        self._model_info: dict | None = None

    # ----------------------------------------------------------------------------- state
    def readiness(self) -> tuple[bool, dict]:
        return self._readiness()

    async def model_info(self) -> dict:
        """What the served model takes and gives (``Predictor.info()``), asked once; 503 until a
        worker answers."""
        if self._model_info is None:
            try:
                result = await asyncio.wait_for(self._submit(PredictRequest(INFO)), self.settings.timeout_s)
            except (asyncio.TimeoutError, RequestRefused):
                raise RequestRefused(503, "the model is not answering yet", "not_ready") from None
            self._model_info = result.info
        return self._model_info

    # --------------------------------------------------------------------------- requests
    def authorize(self, request: Request) -> None:
        """With an API key set: the key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, or 401."""
        key = self.settings.api_key
        if not key:
            return
        given = request.headers.get("x-api-key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise RequestRefused(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                 "unauthorized", {"WWW-Authenticate": "Bearer"})

    async def submit(self, request: PredictRequest) -> PredictResult:
        """The engine's result for ``request``; a result with an error is raised as its refusal
        (422 bad image, 400 not supported, 504 expired)."""
        result = await self._submit(request)
        self.metrics.observe_batch(result.batch)
        if result.error is not None:
            raise RequestRefused(ERROR_STATUS.get(result.error_kind, 400), result.error, result.error_kind or "bad")
        self.metrics.images.labels(request.task).inc(len(result.outputs))
        return result

    async def handle(self, request: Request, work: Callable[[float], Awaitable[Response | dict]],
                     error: ErrorShape, *, admit: bool = True) -> Response:
        """Answer ``request`` with ``await work(deadline)`` (a dict is sent as JSON), within the limits:
        401 without the API key; 503 + Retry-After beyond ``--max-queue`` requests in flight (when
        ``admit``); 504 past ``--timeout``; a :class:`RequestRefused` from the work as its status.
        Errors are shaped by ``error``."""
        try:
            self.authorize(request)
            body = await (self._admitted(work) if admit else work(time.monotonic() + self.settings.timeout_s))
        except RequestRefused as refusal:
            self.metrics.errors.labels(refusal.reason).inc()
            return error(refusal.status, refusal.message, refusal.headers)
        return body if isinstance(body, Response) else JSONResponse(body)

    async def _admitted(self, work: Callable[[float], Awaitable[Response | dict]]) -> Response | dict:
        """``await work(deadline)`` as one of at most ``--max-queue`` requests in flight (503 +
        Retry-After beyond), within ``--timeout`` (504)."""
        if self.in_flight >= self.settings.max_queue:
            retry = str(max(1, round(self._recent_latency)))
            raise RequestRefused(503, f"server busy: {self.in_flight} requests queued (--max-queue "
                                      f"{self.settings.max_queue}); retry after {retry} s", "queue_full",
                                 {"Retry-After": retry})
        self.in_flight += 1
        self.metrics.in_flight.inc()
        start = time.perf_counter()
        deadline = time.monotonic() + self.settings.timeout_s  # the worker stops computing after it, too
        try:
            body = await asyncio.wait_for(work(deadline), self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise RequestRefused(504, f"no answer within {self.settings.timeout_s:g} s (--timeout)", "timeout") \
                from None
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
        self._recent_latency = 0.8 * self._recent_latency + 0.2 * (time.perf_counter() - start)
        return body


class Route:
    """One HTTP route of a protocol: what an engine registers on its FastAPI app
    (``app.add_api_route(route.path, route.endpoint, methods=route.methods, ...)``)."""

    def __init__(self, path: str, endpoint: Callable, methods: list[str], openapi_extra: dict | None = None,
                 include_in_schema: bool = True):
        self.path, self.endpoint, self.methods = path, endpoint, methods
        self.openapi_extra, self.include_in_schema = openapi_extra, include_in_schema

    def add_to(self, app) -> None:
        app.add_api_route(self.path, self.endpoint, methods=self.methods, openapi_extra=self.openapi_extra,
                          include_in_schema=self.include_in_schema)
