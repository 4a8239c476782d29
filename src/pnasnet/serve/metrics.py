"""Prometheus metrics of the HTTP process, served at ``GET /metrics``.

Everything is recorded in the one HTTP process: request counts and latencies by a small ASGI
middleware, refusals where they happen, and batch sizes from the batch description each result
brings back from the inference worker (counted once per batch, by its first result). So no
multi-process metrics setup is needed.
"""

from __future__ import annotations

import time

from .predictor import BatchInfo

#: Paths counted under their own name (the others: see :func:`endpoint_label`).
METRIC_ENDPOINTS = ("/v1/classify", "/v1/features", "/v1/model")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ServerMetrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        common = {"registry": self.registry}
        self.requests = Counter("pnasnet_requests", "HTTP requests to /v1/ and /v2/ endpoints, by endpoint and status code",
                                ["endpoint", "status"], **common)
        self.latency = Histogram("pnasnet_request_duration_seconds", "Time from arrival to answer, by endpoint",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, **common)
        self.errors = Counter("pnasnet_errors", "Requests refused or failed, by reason", ["reason"], **common)
        self.in_flight = Gauge("pnasnet_requests_in_flight", "Requests admitted and not yet answered", **common)
        self.batch_size = Histogram("pnasnet_batch_size", "Requests per model batch", buckets=_BATCH_BUCKETS,
                                    **common)
        self.batch_images = Histogram("pnasnet_batch_images", "Images per model batch", buckets=_BATCH_BUCKETS,
                                      **common)
        self.model_seconds = Histogram("pnasnet_model_seconds", "Model time per batch", buckets=_LATENCY_BUCKETS,
                                       **common)
        self.images = Counter("pnasnet_images", "Images answered, by task", ["task"], **common)

    def observe_batch(self, batch: BatchInfo | None) -> None:
        if batch is not None and batch.first:
            self.batch_size.observe(batch.requests)
            self.batch_images.observe(batch.images)
            self.model_seconds.observe(batch.model_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def endpoint_label(path: str, endpoints: frozenset[str]) -> str:
    """A bounded label for ``path``: itself when it is one of ``endpoints``; the protocol's route for
    Open Inference Protocol / TF Serving paths (the model name is not a label); else "other"."""
    if path in endpoints:
        return path
    if path.startswith("/v2/models/"):
        tail = path.rsplit("/", 1)[-1]
        return f"/v2/models/{tail}" if tail in ("infer", "ready") else "/v2/models/metadata"
    if path.startswith("/v1/models/"):
        return "/v1/models:predict" if path.endswith(":predict") else "/v1/models/status"
    return "other"


class RequestMetricsMiddleware:
    """ASGI middleware: count and time every request under ``/v1/`` and ``/v2/`` by endpoint and
    status (see :func:`endpoint_label`: clients cannot grow the label set)."""

    def __init__(self, app, metrics: ServerMetrics, endpoints: tuple[str, ...]):
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/v1/", "/v2/")):
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            endpoint = endpoint_label(path, self.endpoints)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
