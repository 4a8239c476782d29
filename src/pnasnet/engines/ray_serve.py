"""``pnasnet serve --engine ray``: the engine-neutral Predictor as a Ray Serve deployment, on this
machine or a Ray cluster (``pip install 'pnasnet[ray]'``).

Shape (all Ray Serve's): Ray's HTTP proxy (one per node) routes each request to a replica; a
replica is one process holding the model, a :class:`~pnasnet.serve.predictor.Predictor` and the
same FastAPI routes as the LitServe engine (:mod:`pnasnet.serve.protocols`: pnasnet's own API, the
Open Inference Protocol, TF Serving REST) over a :class:`~pnasnet.serve.gateway.Gateway`. The
gateway's ``submit`` is a ``@serve.batch`` method: requests arriving within ``--max-wait-ms`` run as
one ``Predictor.predict`` call of up to ``--max-batch-size`` requests, in a thread so that the
replica's event loop keeps reading requests.

* **Model**: loaded once by the driver (this process) and put into Ray's object store; every
  replica, on every node, takes it from there (``ray.get``), so no replica reads weights from disk
  and all run exactly the same parameters. Each replica then converts it to its inference form.
* **Replicas**: ``N`` fixed, or ``MIN:MAX`` autoscaled by Ray Serve on the requests in flight per
  replica (target: one full batch). Each replica reserves ``--cpus-per-replica`` CPUs (its PyTorch
  threads unless ``--threads``) and ``--gpus-per-replica`` GPUs.
* **Limits**: per replica, as on LitServe: ``--max-queue`` admitted requests (503 + Retry-After
  beyond, in each protocol's error shape), ``--timeout`` (504), ``--max-body-bytes`` (413),
  ``--max-pixels`` (422). ``max_ongoing_requests`` is set far above the batch size (Ray's default
  of 5 would cap every batch at 5) and above ``--max-queue``, so requests reach the gateway, which
  admits or refuses them; Ray's router answers its own 503 only beyond ~1024 requests waiting for a
  replica.
* **Metrics**: ``GET /metrics`` is the answering replica's registry (``pnasnet_replica{pid=...}``
  names it); cluster-wide figures come from Ray's own metrics export (``ray_serve_*``).
* **Faults**: Ray Serve replaces a replica that dies; requests it held are answered 5xx by the
  proxy, the others are served by the remaining replicas.
* **Shutdown**: SIGTERM / Ctrl+C deletes the application (each replica finishes its requests in
  flight, up to ``--graceful-timeout``), then stops the local Ray this process started. A signal to
  the whole process group (Ctrl+C in a terminal, ``timeout``) also stops the local Ray's own
  processes, so Ray can no longer drain: after ``--graceful-timeout`` + 10 s the server says so and
  leaves (``RayUnresponsive``) instead of waiting for it forever.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..serve.gateway import Gateway
from ..serve.metrics import METRIC_ENDPOINTS, RequestMetricsMiddleware, ServerMetrics
from ..serve.predictor import PredictRequest, PredictResult
from ..serve.protocols import all_routes
from ..serve.settings import ServeSettings, load_model, prepare_served_model, served_predictor
from ..serve.shutdown import signals_start_shutdown
from .ray_data import PoolSize, RayUnresponsive, ray_session

__all__ = ["APP_NAME", "RayServeOptions", "build_app", "parse_replicas", "run_server"]

APP_NAME = "pnasnet"


def parse_replicas(text: "str | int | PoolSize") -> PoolSize:
    """``"N"`` (N fixed replicas) or ``"MIN:MAX"`` (autoscaled between them)."""
    if isinstance(text, PoolSize):
        return text
    text = str(text)
    try:
        return PoolSize.parse(text if ":" in text else f"{text}:{text}")
    except ValueError:
        raise ValueError(f"--replicas must be N or MIN:MAX with 1 <= MIN <= MAX (whole numbers), got {text!r}") \
            from None


@dataclass(frozen=True)
class RayServeOptions:
    address: str | None = None          # None: $RAY_ADDRESS, else a local Ray
    replicas: PoolSize = PoolSize(1, 1)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None  # None: 1 where the cluster has GPUs and --device is not cpu

    def check(self) -> None:
        if self.cpus_per_replica < 0:
            raise ValueError(f"--cpus-per-replica must be >= 0, got {self.cpus_per_replica}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ValueError(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")


class _Replica:
    """One replica: the model from the object store, a Predictor, the gateway and every route."""

    def __init__(self, settings: ServeSettings, model_box: list, threads: int, device: str):
        import ray
        import torch

        started = time.perf_counter()
        torch.set_num_threads(max(1, threads))
        model = ray.get(model_box[0])  # the driver's model, from the object store
        model = prepare_served_model(model.to(device), settings)
        self.settings = settings
        self.predictor = served_predictor(model, settings, engine="ray", replica_pid=os.getpid())
        self.metrics = ServerMetrics()
        from prometheus_client import Gauge

        Gauge("pnasnet_replica", "The Ray Serve replica that answered this scrape", ["pid"],
              registry=self.metrics.registry).labels(str(os.getpid())).set(1)
        self.gateway = Gateway(settings, self.metrics, self._submit, lambda: (True, {"replica_pid": os.getpid()}))
        info = self.predictor.info()
        print(f"pnasnet: replica {os.getpid()} ready on {device} in {time.perf_counter() - started:.1f} s: "
              f"{info['image_size']} px, {info['num_classes']} classes, {info['num_features']} features",
              file=sys.stderr, flush=True)

    async def _submit(self, request: PredictRequest) -> PredictResult:
        return await self._batch(request)

    def _predict(self, requests: list[PredictRequest]) -> list[PredictResult]:
        return self.predictor.predict(requests)

    def __serve_build_asgi_app__(self):
        from fastapi import FastAPI

        app = FastAPI(title="pnasnet", description="PNASNet-5 image classification and feature vectors "
                                                   "(TF-Slim exact), on Ray Serve.")
        for route in all_routes(self.gateway):
            route.add_to(app)
        app.add_middleware(RequestMetricsMiddleware, metrics=self.metrics, endpoints=METRIC_ENDPOINTS)
        return app


def build_app(settings: ServeSettings, model_ref: Any, options: RayServeOptions, device: str, gpus: float):
    """The Ray Serve application (not started): one deployment of :class:`_Replica`."""
    from ray import serve

    batch = serve.batch(max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.max_wait_ms / 1000)

    class PnasnetReplica(_Replica):
        @batch
        async def _batch(self, requests: list[PredictRequest]) -> list[PredictResult]:
            # a thread: the event loop keeps admitting (and refusing) requests while the model runs
            return await asyncio.to_thread(self._predict, list(requests))

    ingress = serve.ingress()(PnasnetReplica)
    replicas = options.replicas
    scaling: dict[str, Any] = ({"num_replicas": replicas.min} if replicas.min == replicas.max else
                               {"autoscaling_config": {"min_replicas": replicas.min, "max_replicas": replicas.max,
                                                       "initial_replicas": replicas.min,
                                                       "target_ongoing_requests": settings.max_batch_size}})
    deployment = serve.deployment(
        ingress, name="PnasnetReplica",
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": gpus},
        # Far above the batch size and --max-queue: every request reaches a replica's gateway, which
        # admits --max-queue and refuses the rest at once in the protocol's shape (503 + Retry-After).
        max_ongoing_requests=max(256, 2 * settings.max_queue + settings.max_batch_size),
        # Ray's router counts requests it has not yet handed to a replica; a burst passes through it
        # (a small bound here answered bursts with Ray's own 503), a flood beyond this bound does not.
        max_queued_requests=max(1024, 4 * settings.max_queue),
        graceful_shutdown_timeout_s=settings.graceful_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        **scaling)
    threads = settings.threads or max(1, int(options.cpus_per_replica))
    return deployment.bind(settings, [model_ref], threads, device)


def _placement(ray, settings: ServeSettings, options: RayServeOptions) -> tuple[str, float]:
    """``(device, GPUs per replica)`` from the options and what the cluster has."""
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_gpus and settings.device != "cpu" else 0.0
    if settings.device == "cuda" and not gpus:
        raise ValueError("--device cuda with the ray engine needs --gpus-per-replica > 0")
    if gpus and not cluster_gpus:
        raise ValueError(f"--gpus-per-replica {gpus:g}: the Ray cluster has no GPUs")
    return ("cuda" if gpus else "cpu"), float(gpus)


def _finishes_within(seconds: float, call: Callable[[], Any], failure: str) -> bool:
    """Run ``call`` in a daemon thread; whether it returned (or raised, which is reported) in time."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception as error:  # not deployed yet (interrupted start), or the cluster is gone
            print(f"pnasnet: {failure}: {error}", file=sys.stderr, flush=True)
        finally:
            done.set()

    threading.Thread(target=run, name="pnasnet-ray-shutdown", daemon=True).start()
    return done.wait(seconds)


def run_server(settings: ServeSettings, options: RayServeOptions = RayServeOptions(),
               announce: Callable[[], None] | None = None) -> None:
    """Serve ``settings`` on Ray Serve until SIGTERM / SIGINT, then let the replicas finish the
    requests in flight and return. ``announce()`` is called once the settings are accepted, before
    the model loads."""
    settings.check()
    options.check()
    if announce is not None:
        announce()
    stop = threading.Event()
    running = threading.Event()

    def start_shutdown() -> bool:
        if not running.is_set():
            return False  # still starting: interrupt the start (KeyboardInterrupt)
        stop.set()
        return True

    # A local Ray (started here) is stopped at the end, Serve included; on a cluster only our application goes.
    import ray as ray_module

    local = not ray_module.is_initialized() and not (options.address or os.environ.get("RAY_ADDRESS"))
    # Our signal handlers after ray.init, which installs its own (that would stop the driver at once).
    with ray_session(options.address, quiet=True) as ray, signals_start_shutdown(start_shutdown):
        from ray import serve

        device, gpus = _placement(ray, settings, options)
        model_ref = ray.put(load_model(settings))  # once, for every replica on every node
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(build_app(settings, model_ref, options, device, gpus), name=APP_NAME, route_prefix="/",
                      blocking=False)
            running.set()
            print(f"pnasnet: Ray Serve application {APP_NAME!r} running ({options.replicas.min}"
                  f"{'' if options.replicas.min == options.replicas.max else f'..{options.replicas.max}'} "
                  f"replica(s), {options.cpus_per_replica:g} CPU and {gpus:g} GPU each)", file=sys.stderr,
                  flush=True)
            while not stop.wait(0.5):
                pass
            print("pnasnet: stopping: replicas finish the requests in flight", file=sys.stderr, flush=True)
        finally:
            # graceful: each replica drains, then exits. Bounded: a Ctrl+C in a terminal (or a signal
            # to the process group, as `timeout` sends) reaches the local Ray's own processes too,
            # and with its raylet gone Ray's calls wait forever.
            limit = settings.graceful_timeout_s + 10
            if not _finishes_within(limit, lambda: serve.delete(APP_NAME, _blocking=True),
                                    "could not delete the Ray Serve application"):
                print(f"pnasnet: Ray did not answer within {limit:g} s (a signal to the whole process group "
                      "stops the local Ray's processes too; send SIGTERM to this process alone for a graceful "
                      "stop); leaving without waiting for it", file=sys.stderr, flush=True)
                raise RayUnresponsive(limit)
            if local:
                _finishes_within(30, serve.shutdown, "could not stop Ray Serve")
