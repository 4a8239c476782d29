"""Command line: ``pnasnet serve`` (argument parsing and printing only; the server is
:mod:`pnasnet.serve` on LitServe, which needs the ``pnasnet[serve]`` extra, or
:mod:`pnasnet.engines.ray_serve` with ``--engine ray``, which needs ``pnasnet[ray]``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

API_KEY_ENV = "PNASNET_API_KEY"
#: The values of ``--engine``: LitServe (one machine) or Ray Serve (a cluster).
SERVE_ENGINES = ("litserve", "ray")


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"{args.api_key_file}: the API key file is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def _weights(args: argparse.Namespace):
    """The weights for the settings, the source to download before the workers start (or None), and
    the choice they come from. Local paths are checked here; a source name (the default: the
    variant's TF-Slim release) is fetched once the settings are accepted (``announce``), and the
    workers then find it in the cache."""
    from ..api import is_model_dir, resolve_weights, source_name
    from .options import choose_weights

    choice = choose_weights(args.model, args.weights, seed=args.seed)
    weights, download = choice.weights, None
    if weights is not None and not is_model_dir(args.model):
        if source_name(weights) is None:
            weights = str(resolve_weights(_source_model(args), weights))  # FileNotFoundError now
        else:
            download = weights
    return weights, download, choice


def _source_model(args: argparse.Namespace) -> str:
    return "pnasnet5_large" if args.model == "auto" else args.model


def _ray_options(args: argparse.Namespace):
    """The Ray Serve options, checked; RuntimeError without Ray Serve installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise RuntimeError("--engine ray needs Ray Serve: pip install 'pnasnet[ray]'")
    from ..engines.ray_serve import RayServeOptions, parse_replicas

    if args.workers != 1:
        raise ValueError("--workers is for the litserve engine; with --engine ray use --replicas N|MIN:MAX")

    options = RayServeOptions(address=args.address, replicas=parse_replicas(args.replicas),
                              cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
    options.check()
    return options


def _cmd_serve(args: argparse.Namespace) -> int:
    from .options import download_advice
    from ..serve import ServeSettings, run_server

    weights, download, choice = _weights(args)
    settings = ServeSettings(
        model=args.model, weights=weights, seed=args.seed, image_size=args.image_size,
        bounded_activation=args.bounded_activation,
        transform=args.transform, device=args.device, threads=args.threads, backend=args.backend,
        precision=args.precision, calibration=tuple(args.calibration or ()),
        calibration_count=args.calibration_count, workers=args.workers,
        decode_threads=args.decode_threads, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels, max_files=args.max_files,
        api_key=_api_key(args), graceful_timeout_s=args.graceful_timeout, log_level=args.log_level,
        model_name=args.model_name)
    settings.check()
    ray_options = _ray_options(args) if args.engine == "ray" else None

    def announce():
        if download is not None:
            # once, with progress, before the workers start (offline: fails here, in seconds)
            from ..api import resolve_weights

            with download_advice():
                resolve_weights(_source_model(args), download)
        if choice.random:
            print(f"pnasnet: note: --weights none: serving {settings.describe_weights()}: the outputs mean "
                  "nothing", file=sys.stderr)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"pnasnet: serving {args.model} on http://{host}:{args.port} (engine {args.engine}; batches of up to "
              f"{args.max_batch_size} within {args.max_wait_ms:g} ms; API key "
              f"{'required' if settings.api_key else 'off'})\n"
              "pnasnet: POST /v1/classify /v1/features; GET /v1/model /healthz /readyz /metrics /docs /openapi.json\n"
              f"pnasnet: Open Inference Protocol: /v2/models/{settings.served_name()}/infer; TF Serving REST: "
              f"/v1/models/{settings.served_name()}:predict",
              file=sys.stderr, flush=True)

    try:
        if ray_options is not None:
            from ..engines.ray_serve import RayUnresponsive, run_server as run_ray_server

            try:
                run_ray_server(settings, ray_options, announce=announce)
            except RayUnresponsive:
                # Ray's own exit hooks would wait for the dead local Ray as well: leave now.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        else:
            run_server(settings, engine=args.engine, announce=announce)
    except KeyboardInterrupt:
        return 130
    print("pnasnet: server stopped", file=sys.stderr)
    return 0


def add_serve_commands(sub: argparse._SubParsersAction) -> None:
    """Register this group's subcommands on the top-level parser."""
    from .options import SEED_HELP, WEIGHTS_HELP
    from ..data import DEFAULT_MAX_PIXELS
    from ..serve.settings import MIB, ServeSettings

    d = ServeSettings()
    p = sub.add_parser("serve", help="serve classification and feature vectors over HTTP with dynamic batching",
                       description="Serve the model over HTTP: POST /v1/classify and /v1/features with an image body "
                                   "(or multipart files); requests arriving together are run as one batch. "
                                   "SIGTERM or Ctrl+C finishes the requests in flight, then stops.")
    p.add_argument("--model", default=d.model, help="variant, 'auto' (configuration from --weights) or a model "
                                                    "directory made by `pnasnet train` (default %(default)s)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--seed", type=int, default=d.seed, help=SEED_HELP)
    p.add_argument("--image-size", type=int, help="side of the model input (default: the model's, 331 / 224)")
    p.add_argument("--transform", choices=("tf-slim", "resize"), default=d.transform,
                   help="preprocessing (default %(default)s: central crop 0.875 + bilinear, the published accuracy)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="default %(default)s")
    p.add_argument("--threads", type=int, help="CPU threads per inference worker (default: PyTorch's)")
    from .options import add_backend_options, add_bounded_activation_option, add_calibration_options

    add_bounded_activation_option(p)
    add_backend_options(p)
    add_calibration_options(p)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="inference worker processes, each with its own copy of the model (default %(default)s)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="image-decoding threads per worker (default %(default)s)")
    p.add_argument("--model-name", help="the model's name in Open Inference Protocol and TF Serving paths "
                                        "(/v2/models/NAME/infer, /v1/models/NAME:predict; default: the variant, or "
                                        "'pnasnet' for auto / a model directory)")
    p.add_argument("--engine", choices=SERVE_ENGINES, default="litserve",
                   help="serving framework: litserve (default: one machine) or ray (Ray Serve: replicas on this "
                        "machine or a Ray cluster; pip install 'pnasnet[ray]')")
    ray = p.add_argument_group("Ray Serve (--engine ray)")
    ray.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local Ray); 'auto' = "
                                       "the cluster `ray start` runs on this machine, ray://HOST:10001 = a remote one")
    ray.add_argument("--replicas", default="1", metavar="N|MIN:MAX",
                     help="model replicas: N (fixed) or MIN:MAX (autoscaled on requests in flight; default 1)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C",
                     help="CPUs each replica reserves; also its PyTorch threads unless --threads (default %(default)s)")
    ray.add_argument("--gpus-per-replica", type=float, metavar="G",
                     help="GPUs each replica reserves (default: 1 where the cluster has GPUs, unless --device cpu)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default=d.host, help="address to listen on: 127.0.0.1 (default), 0.0.0.0 or ::")
    net.add_argument("--port", type=int, default=d.port, help="default %(default)s")
    net.add_argument("--api-key-file", help=f"file holding an API key that /v1/* and /v2/models/* requests must "
                                            f"send (or set ${API_KEY_ENV}); health, readiness and metrics stay open")
    batching = p.add_argument_group("dynamic batching")
    batching.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                          help="requests run together, at most (default %(default)s)")
    batching.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                          help="how long a batch waits to fill (default %(default)s)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="requests admitted and not yet answered; more get 503 + Retry-After (default %(default)s)")
    limits.add_argument("--timeout", type=float, default=d.timeout_s,
                        help="seconds per request before 504 (default %(default)s)")
    limits.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"request body limit, 413 beyond (default {d.max_body_bytes // MIB} MiB)")
    limits.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="decoded pixels per image, 422 beyond (decompression bombs; default %(default)s)")
    limits.add_argument("--max-files", type=int, default=d.max_files,
                        help="images per multipart request (default %(default)s)")
    limits.add_argument("--graceful-timeout", type=float, default=d.graceful_timeout_s,
                        help="seconds SIGTERM waits for requests in flight (default %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=d.log_level,
                   help="server log level (default %(default)s; info logs each request)")
    p.set_defaults(func=_cmd_serve)
