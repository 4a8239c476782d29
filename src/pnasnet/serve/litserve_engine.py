"""``pnasnet serve`` on LitServe: one machine, dynamic batching in LitServe's worker process.

Processes (all LitServe's): the main process (this module's ``run_server``), one HTTP process
(uvicorn + FastAPI) and ``workers`` inference processes, each holding a model and a
:class:`~pnasnet.serve.predictor.Predictor`. LitServe's batching loop collects requests for up to
``max_wait_ms`` or ``max_batch_size`` requests and calls ``predict`` with the list.

The endpoints are a LitServe *spec* (the framework's way to define one's own routes, as its
OpenAI spec does): they read and check the body in the HTTP process, refuse what is over a limit
before it reaches the model's queue, hand a :class:`PredictRequest` to LitServe's request queue,
and wait for exactly that request's result. Decoding runs in the worker, inside the batch, so an
undecodable image comes back as that request's 422 while the rest of its batch is answered.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import multiprocessing
import os
import pickle
import sys
import time
import uuid

import litserve as ls
from fastapi import HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from litserve.callbacks import Callback
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from .http_inputs import RequestRefused, parse_top_k, read_images
from .http_outputs import ERROR_STATUS, ClassifyResponse, FeaturesResponse, openapi_extra, result_body
from .metrics import RequestMetricsMiddleware, ServerMetrics
from .predictor import CLASSIFY, FEATURES, INFO, PredictRequest, PredictResult, Predictor
from .settings import ServeSettings, load_model, prepare_served_model
from .shutdown import signals_start_shutdown, worker_waits_for_http_drain

logger = logging.getLogger("pnasnet.serve")

QUEUE_KEY = "/v1/images"  # LitServe's name for the one request queue behind both endpoints
IMAGE_ENDPOINTS = ("/v1/classify", "/v1/features")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class PnasnetSpec(LitSpec):
    """The HTTP side: routes, limits, admission, metrics. Lives in the HTTP process."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics):
        super().__init__()
        self.api_path = QUEUE_KEY
        self.settings = settings
        self.metrics = metrics
        self._in_flight = 0
        self._recent_latency = 1.0  # seconds, moving average: the Retry-After hint
        self._model_info: dict | None = None

    def __getstate__(self):
        # The spec travels to the worker process with the LitAPI; the worker needs none of this.
        state = super().__getstate__()
        state["metrics"] = None
        return state

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint("/v1/classify", self.classify, ["POST"])
        self.add_endpoint("/v1/features", self.features, ["POST"])
        self.add_endpoint("/v1/model", self.model_info, ["GET"])
        self.add_endpoint("/healthz", self.healthz, ["GET"])
        self.add_endpoint("/readyz", self.readyz, ["GET"])
        self.add_endpoint("/metrics", self.metrics_text, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # ------------------------------------------------------------------------------ endpoints
    async def classify(self, request: Request, top_k: int | None = Query(
            None, description="classes per image, most probable first (default 5)")) -> ClassifyResponse:
        """Top classes with probabilities for each image in the request."""
        return await self._serve(request, CLASSIFY, top_k)

    async def features(self, request: Request) -> FeaturesResponse:
        """The feature vector (global-average-pooled last cell) of each image in the request."""
        return await self._serve(request, FEATURES, None)

    async def model_info(self) -> dict:
        """The model being served: size it takes, classes, feature length, transform."""
        if self._model_info is None:
            try:
                result = await asyncio.wait_for(self._submit(PredictRequest(INFO)), self.settings.timeout_s)
            except (asyncio.TimeoutError, RequestRefused):
                return _error(503, "the model is not answering yet")
            self._model_info = result.info
        return self._model_info

    async def healthz(self) -> dict:
        """Liveness: the HTTP process answers."""
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        """Readiness: at least one inference worker has its weights loaded."""
        states = dict(self._server.workers_setup_status) if self._server else {}
        ready = sum(state == "ready" for state in states.values())
        body = {"ready": ready > 0, "workers_ready": ready, "workers": len(states)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_text(self) -> Response:
        """Prometheus text format."""
        payload, content_type = self.metrics.exposition()
        return Response(payload, media_type=content_type)

    # ------------------------------------------------------------------------ request handling
    async def _serve(self, request: Request, task: str, top_k: int | None) -> Response:
        if self._in_flight >= self.settings.max_queue:
            self.metrics.errors.labels("queue_full").inc()
            retry = str(max(1, round(self._recent_latency)))
            return _error(503, f"server busy: {self._in_flight} requests queued (--max-queue "
                               f"{self.settings.max_queue}); retry after {retry} s", {"Retry-After": retry})
        self._in_flight += 1
        self.metrics.in_flight.inc()
        start = time.perf_counter()
        deadline = time.monotonic() + self.settings.timeout_s  # the worker stops computing after it, too
        try:
            body = await asyncio.wait_for(self._answer(request, task, top_k, deadline), self.settings.timeout_s)
            self._recent_latency = 0.8 * self._recent_latency + 0.2 * (time.perf_counter() - start)
            return JSONResponse(body)
        except asyncio.TimeoutError:
            self.metrics.errors.labels("timeout").inc()
            return _error(504, f"no answer within {self.settings.timeout_s:g} s (--timeout)")
        except RequestRefused as refusal:
            self.metrics.errors.labels(refusal.reason).inc()
            return _error(refusal.status, refusal.message, refusal.headers)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()

    async def _answer(self, request: Request, task: str, top_k: int | None, deadline: float) -> dict:
        images, fields = await read_images(request, self.settings)
        k = parse_top_k(fields.get("top_k", top_k), 5, self.settings.max_top_k) if task == CLASSIFY else 5
        result = await self._submit(PredictRequest(task, tuple(images), k, deadline))
        if result.error is not None:
            raise RequestRefused(ERROR_STATUS.get(result.error_kind, 400), result.error, result.error_kind or "bad")
        self.metrics.images.labels(task).inc(len(result.outputs))
        return result_body(result)

    async def _submit(self, payload: PredictRequest) -> PredictResult:
        """Put ``payload`` on LitServe's request queue and wait for its own result."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
            await event.wait()
            output, status = self.response_buffer[uid].response
        finally:
            self.response_buffer.pop(uid, None)  # also when the wait is cancelled by the timeout
        if status == LitAPIStatus.ERROR:
            raise self._worker_failure(output)
        self.metrics.observe_batch(output.batch)
        return output

    @staticmethod
    def _worker_failure(output) -> RequestRefused:
        if isinstance(output, bytes):  # LitServe sends exceptions pickled (our own worker's)
            try:
                output = pickle.loads(output)
            except Exception:
                pass
        if isinstance(output, HTTPException) and output.status_code == 504:
            return RequestRefused(504, "waited in the queue past --timeout", "timeout")
        logger.error("inference worker failed on a batch: %r", output)
        return RequestRefused(500, f"the model failed on this batch: {output!r}", "internal")


class PnasnetLitAPI(ls.LitAPI):
    """The worker side: load the model once, then predict on the batches LitServe collects."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics, http_stopped):
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.max_wait_ms / 1000,
                         spec=PnasnetSpec(settings, metrics))
        self.settings = settings
        self.http_stopped = http_stopped
        self.parent_pid = os.getpid()
        self.predictor: Predictor | None = None

    def setup(self, device) -> None:
        import torch

        worker_waits_for_http_drain(self.http_stopped, self.parent_pid)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        started = time.perf_counter()
        model = prepare_served_model(load_model(self.settings).to(device), self.settings)
        self.predictor = Predictor(model, image_size=self.settings.image_size, transform=self.settings.transform,
                                   max_pixels=self.settings.max_pixels,
                                   max_images_per_call=self.settings.max_batch_size,
                                   decode_threads=self.settings.decode_threads,
                                   description={"model": self.settings.model,
                                                "weights": self.settings.describe_weights(),
                                                "backend": getattr(model, "backend", "plain"),
                                                "precision": getattr(model, "precision", "float32")})
        info = self.predictor.info()
        print(f"pnasnet: worker {os.getpid()} loaded {self.settings.model} ({info['weights']}) on {device} in "
              f"{time.perf_counter() - started:.1f} s: {info['image_size']} px, {info['num_classes']} classes, "
              f"{info['num_features']} features", file=sys.stderr, flush=True)

    def decode_request(self, request: PredictRequest) -> PredictRequest:
        return request  # decoding happens in predict, per image, so one bad image fails only its request

    def predict(self, x):
        if isinstance(x, PredictRequest):  # max_batch_size 1: LitServe passes the request itself
            return self.predictor.predict([x])[0]
        return self.predictor.predict(list(x))

    def encode_response(self, output: PredictResult) -> PredictResult:
        return output  # shaped into JSON in the HTTP process

    def authorize(self, request: Request) -> None:
        """LitServe's authentication hook (a FastAPI dependency of every route): with an API key
        set, /v1/* needs it; health, readiness, metrics and the docs stay open for probes."""
        key = self.settings.api_key
        if not key or not request.url.path.startswith("/v1/"):
            return
        given = request.headers.get("x-api-key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            if self.spec.metrics is not None:
                self.spec.metrics.errors.labels("unauthorized").inc()
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                headers={"WWW-Authenticate": "Bearer"})


class _MarkHttpStopped(Callback):
    """In the HTTP process, once uvicorn has finished the requests in flight: let workers exit."""

    def __init__(self, http_stopped):
        self.http_stopped = http_stopped

    def on_server_end(self, *args, **kwargs):
        self.http_stopped.set()


def _document_image_routes(server: ls.LitServer, settings: ServeSettings) -> None:
    extra = openapi_extra(settings.max_files)
    for route in server.app.routes:
        if getattr(route, "path", None) in IMAGE_ENDPOINTS:
            route.openapi_extra = extra


#: The addresses LitServe binds (it refuses others, and ports below 1024).
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def build_server(settings: ServeSettings) -> ls.LitServer:
    """The LitServer for ``settings`` (not started)."""
    settings.check()
    if settings.host not in LITSERVE_HOSTS:
        raise ValueError(f"--host must be one of {', '.join(LITSERVE_HOSTS)} with the litserve engine "
                         f"(got {settings.host!r}); put a reverse proxy in front to bind other addresses")
    if settings.port < 1024:
        raise ValueError(f"--port must be 1024 or above with the litserve engine (got {settings.port})")
    metrics = ServerMetrics()
    http_stopped = multiprocessing.get_context("spawn").Event()
    api = PnasnetLitAPI(settings, metrics, http_stopped)
    server = ls.LitServer(
        api,
        accelerator="cpu" if settings.device == "cpu" else settings.device,
        devices=1,
        workers_per_device=settings.workers,
        timeout=settings.timeout_s,
        max_payload_size=settings.max_body_bytes,
        callbacks=[_MarkHttpStopped(http_stopped)],
        middlewares=[(RequestMetricsMiddleware, {"metrics": metrics, "endpoints": IMAGE_ENDPOINTS + ("/v1/model",)})],
        model_metadata={"model": settings.model, "weights": settings.describe_weights()},
    )
    server.app.title = "pnasnet"
    server.app.description = "PNASNet-5 image classification and feature vectors (TF-Slim exact)."
    server.uvicorn_graceful_timeout = settings.graceful_timeout_s
    _document_image_routes(server, settings)
    return server


def run_server(settings: ServeSettings, announce=None) -> None:
    """Serve until SIGTERM / SIGINT, then finish the requests in flight and return. ``announce()``
    is called once the settings are accepted, before the model loads. Workers are spawned
    processes, so a script calling this needs the ``if __name__ == "__main__":`` guard.

    A signal before any worker is ready (the model still loading, or a worker that died while
    starting, which LitServe would wait for forever) stops the start: the worker processes are
    killed and KeyboardInterrupt is raised."""
    server = build_server(settings)
    if announce is not None:
        announce()

    def start_shutdown() -> bool:
        event = server._shutdown_event  # LitServe's own stop switch (exists once run() has begun)
        if event is None or not any(s == "ready" for s in dict(server.workers_setup_status).values()):
            return False
        event.set()  # run() then stops the HTTP process first (it finishes its requests), then the workers
        return True

    with signals_start_shutdown(start_shutdown):
        try:
            server.run(host=settings.host, port=settings.port, num_api_servers=1, log_level=settings.log_level,
                       generate_client_file=False)
        except KeyboardInterrupt:
            for worker in getattr(server, "inference_workers", None) or []:
                worker.kill()  # nothing was accepted yet: no work to finish
            raise
