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
import logging
import multiprocessing
import os
import pickle
import sys
import time
import uuid

import litserve as ls
from fastapi import HTTPException
from litserve.callbacks import Callback
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from .gateway import Gateway
from .http_inputs import RequestRefused
from .metrics import METRIC_ENDPOINTS, RequestMetricsMiddleware, ServerMetrics
from .predictor import PredictRequest, PredictResult, Predictor
from .protocols import all_routes
from .settings import ServeSettings, load_model, prepare_served_model, served_predictor
from .shutdown import signals_start_shutdown, worker_waits_for_http_drain

logger = logging.getLogger("pnasnet.serve")

QUEUE_KEY = "/v1/images"  # LitServe's name for the one request queue behind every endpoint


class PnasnetSpec(LitSpec):
    """The HTTP side: every protocol's routes (:mod:`pnasnet.serve.protocols`) over a
    :class:`Gateway` whose ``submit`` is LitServe's request queue. Lives in the HTTP process."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics):
        super().__init__()
        self.api_path = QUEUE_KEY
        self.settings = settings
        self.metrics = metrics
        self.gateway = Gateway(settings, metrics, self._submit, self._readiness)
        self.routes = all_routes(self.gateway)

    def __getstate__(self):
        # The spec travels to the worker process with the LitAPI; the worker needs none of this.
        state = super().__getstate__()
        state["metrics"] = state["gateway"] = None
        state["routes"] = []
        state["_endpoints"] = []
        return state

    def pre_setup(self, lit_api) -> None:
        for route in self.routes:
            self.add_endpoint(route.path, route.endpoint, route.methods)

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    def _readiness(self) -> tuple[bool, dict]:
        """At least one inference worker has its weights loaded."""
        states = dict(self._server.workers_setup_status) if self._server else {}
        ready = sum(state == "ready" for state in states.values())
        return ready > 0, {"workers_ready": ready, "workers": len(states)}

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
        self.predictor = served_predictor(model, self.settings)
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


class _MarkHttpStopped(Callback):
    """In the HTTP process, once uvicorn has finished the requests in flight: let workers exit."""

    def __init__(self, http_stopped):
        self.http_stopped = http_stopped

    def on_server_end(self, *args, **kwargs):
        self.http_stopped.set()


def _document_routes(server: ls.LitServer, spec: PnasnetSpec) -> None:
    extras = {route.path: route.openapi_extra for route in spec.routes if route.openapi_extra}
    for route in server.app.routes:
        if getattr(route, "path", None) in extras:
            route.openapi_extra = extras[route.path]


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
        middlewares=[(RequestMetricsMiddleware, {"metrics": metrics, "endpoints": METRIC_ENDPOINTS})],
        model_metadata={"model": settings.model, "weights": settings.describe_weights()},
    )
    server.app.title = "pnasnet"
    server.app.description = "PNASNet-5 image classification and feature vectors (TF-Slim exact)."
    server.uvicorn_graceful_timeout = settings.graceful_timeout_s
    _document_routes(server, api.spec)
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
