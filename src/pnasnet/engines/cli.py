"""``--engine``, ``--address``, ``--concurrency``, ``--cpus-per-actor``, ``--gpus-per-actor`` for
``pnasnet classify`` and ``pnasnet features``, and the two commands' ``--engine ray`` bodies. They
print exactly what the local commands print and share their exit statuses."""

from __future__ import annotations

import argparse
import sys

from . import ENGINES


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (--engine ray: Ray Data, on this machine or a cluster; "
                                      "needs pip install 'pnasnet[ray]')")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process and --workers decoders (default); ray: decode tasks and a pool "
                            "of model actors on Ray Data. With ray, inputs may also be URIs (s3://bucket/photos/, "
                            "gs://..., file://...) and features' --out is a folder or URI of Parquet parts")
    group.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local Ray); "
                                         "'auto' = the cluster `ray start` runs on this machine, "
                                         "ray://HOST:10001 = a remote one")
    group.add_argument("--concurrency", metavar="N|MIN:MAX",
                       help="model actors: N (autoscaling 1..N) or MIN:MAX (default: one per GPU with "
                            "--gpus-per-actor; else one per CPU, leaving 1 CPU in 8 (at least one) to decoding)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N",
                       help="CPUs each model actor reserves; also its PyTorch threads unless --threads "
                            "(default %(default)s)")
    group.add_argument("--gpus-per-actor", type=float, metavar="N",
                       help="GPUs each model actor reserves: 1, or 0.5 for two actors per GPU, 0 for none "
                            "(default: 1 where the cluster has GPUs, unless --device cpu; else 0)")


def _ray_options(args: argparse.Namespace) -> dict:
    return dict(transform=args.transform, image_size=args.image_size, batch_size=args.batch_size,
                max_pixels=args.max_pixels, address=args.address, concurrency=args.concurrency,
                cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, threads=args.threads,
                device=args.device, backend=args.backend, precision=args.precision, quiet=args.quiet)


def _inputs(args: argparse.Namespace) -> list[str]:
    from .sources import expand_sources

    paths = expand_sources(args.inputs)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.inputs)}")
    return paths


def _driver_model(args: argparse.Namespace):
    """The model as the local commands load it, kept on the CPU here: it is shipped to the actors."""
    from ..cli_inference import _load_model

    device, args.device = args.device, "cpu"
    try:
        model, described = _load_model(args)
    finally:
        args.device = device
    return model, described


def cmd_features_ray(args: argparse.Namespace) -> int:
    from ..cli_inference import EXIT_INTERRUPTED, report_features_summary
    from ..tasks import TqdmProgress
    from .ray_data import extract_features_ray, import_ray

    import_ray()  # fail now, not after loading the model, if Ray Data is missing

    paths = _inputs(args)
    model, described = _driver_model(args)
    try:
        summary = extract_features_ray(model, paths, args.out, model_name=args.model, weights=described,
                                       overwrite=args.overwrite, chunk_size=args.chunk_size,
                                       progress=TqdmProgress(show_bar=not args.quiet), **_ray_options(args))
    except KeyboardInterrupt:
        print("pnasnet: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report_features_summary(args, summary, f"{args.out} ({len(summary.files)} Parquet files)")


def cmd_classify_ray(args: argparse.Namespace) -> int:
    from ..cli_inference import print_classifications
    from ..tasks import TqdmProgress
    from .ray_data import classify_paths_ray, import_ray

    import_ray()

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    paths = _inputs(args)
    model, _ = _driver_model(args)
    progress = TqdmProgress(show_bar=not args.quiet)
    return print_classifications(args, paths, progress, lambda: classify_paths_ray(
        model, paths, top_k=args.top_k, progress=progress, **_ray_options(args)))
