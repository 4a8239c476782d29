"""Command line: ``pnasnet classify`` and ``pnasnet features`` (argument parsing and printing only;
the work is done by :mod:`pnasnet.tasks`, or with ``--engine ray`` by :mod:`pnasnet.engines`, whose
runners return the same results, printed here alike).

Weights: without ``--weights``, a variant's published TF-Slim weights (downloaded once, cached,
verified; see :mod:`pnasnet.cli.options`); ``--weights none`` for random ones.

Exit status: 0 when every input was read, 1 when some could not be (each reported on stderr and
in the output), 2 on usage errors (bad options, no inputs, an output made by another run) and
weights that cannot be had (offline, say), 130 when interrupted (``features`` then resumes when
run again).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from ..tasks.inputs import printable_path
from .options import add_backend_options, add_bounded_activation_option, add_calibration_options, add_engine_options

EXIT_OK, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 130

_INPUTS_HELP = ("image files, directories (searched recursively for image extensions), glob patterns "
                "(quote them; ** for any depth) or @LIST (a text file naming one input per line)")


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    from .options import SEED_HELP, WEIGHTS_HELP
    from ..data import DEFAULT_MAX_PIXELS
    from ..tasks import TRANSFORMS
    from ..tasks.inference import DEFAULT_BATCH_SIZE

    parser.add_argument("inputs", nargs="+", metavar="PATH", help=_INPUTS_HELP)
    parser.add_argument("--model", default="pnasnet5_large", help="variant (see `pnasnet models`; default %(default)s), "
                                                          "'auto' (configuration from --weights), or a model directory "
                                                          "made by `pnasnet train`")
    parser.add_argument("--weights", help=WEIGHTS_HELP)
    add_bounded_activation_option(parser)
    parser.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    parser.add_argument("--transform", choices=sorted(TRANSFORMS),
                        help="preprocessing: tf-slim = central crop 0.875 + bilinear resize, as the published "
                             "accuracy was measured (default; for a model directory, what it was trained with); "
                             "resize = whole image resized (TF-Hub's advice)")
    parser.add_argument("--image-size", type=int, help="side of the model input (default: the model's, 331 / 224, "
                                                       "or the size a model directory was trained at)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per model call (default %(default)s)")
    parser.add_argument("--workers", type=int, help="image decoding processes (default: 2 on a CPU, up to 8 "
                                                    "with a GPU; 0 = decode in the main process)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: PyTorch's, one per core)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this (decompression bombs; default %(default)s)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar or notes (failures are still reported)")
    add_backend_options(parser)
    add_calibration_options(parser)
    add_engine_options(parser)  # --engine local|ray, --address, --concurrency, --cpus/--gpus-per-actor


def _backend_options(args: argparse.Namespace, model) -> dict:
    """backend, precision, calibration images (int8) and in-place conversion for the tasks."""
    calibration = None
    if args.precision == "int8":
        from ..tasks.inference import load_calibration_images, model_image_size

        if not args.calibration:
            raise ValueError("--precision int8 needs --calibration PATH...: images like the ones to be processed")
        calibration = load_calibration_images(args.calibration, model_image_size(model, args.image_size),
                                              count=args.calibration_count, transform=args.transform)
    elif args.calibration:
        raise ValueError("--calibration is for --precision int8")
    if args.precision != "float32" and not args.quiet:
        print(f"pnasnet: note: --precision {args.precision} computes a slightly different function than float32 "
              "(see benchmarks/RESULTS.md); check it on your own images before relying on it", file=sys.stderr)
    return dict(backend=args.backend, precision=args.precision, calibration=calibration, in_place=True)


def _load_model(args: argparse.Namespace):
    """The model on its device, and how its weights are described in outputs."""
    import torch

    from ..api import create_model
    from .options import choose_weights, download_advice
    from ..inference import check_backend_choice

    check_backend_choice(args.backend, args.precision)  # before the weights are loaded
    if args.precision == "int8" and not getattr(args, "calibration", None) and args.engine != "ray":
        raise ValueError("--precision int8 needs --calibration PATH...: images like the ones to be processed")
    choice = choose_weights(args.model, args.weights, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if choice.random:
        torch.manual_seed(args.seed)
        if not args.quiet:
            print(f"pnasnet: note: --weights none: using {choice.described}: the outputs mean nothing",
                  file=sys.stderr)
    with download_advice():  # without --weights: the TF-Slim release, downloaded once (offline: fails here)
        model = create_model(args.model, weights=choice.weights, progress=not args.quiet,
                             bounded_activation=args.bounded_activation)
    described = choice.described
    recorded = getattr(model, "preprocessing", {})  # a model directory's transform and size
    if args.transform is None:
        args.transform = recorded.get("transform", "tf-slim")
    if args.image_size is None:
        args.image_size = recorded.get("image_size")
    device = args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), described


def _progress(args: argparse.Namespace):
    """The progress display; on the CPU it also keeps freed memory for reuse once the first batch
    is done (see ``pnasnet.inference.keep_freed_memory``): every batch has the same activation
    sizes, so later batches reuse the first one's memory instead of faulting in ~1 GB of fresh
    pages each (batch 8, Large). Not earlier: loading and converting the model allocate and free
    blocks of every size, and a heap that never shrinks would keep their holes."""
    from ..tasks import TqdmProgress

    class KeepMemoryAfterFirstBatch(TqdmProgress):
        kept = False

        def advance(self, paths, errors):
            super().advance(paths, errors)
            if not self.kept:
                from ..inference import keep_freed_memory

                self.kept = True
                keep_freed_memory()

    on_cpu = args.device.startswith("cpu")  # resolved by _load_model
    return (KeepMemoryAfterFirstBatch if on_cpu else TqdmProgress)(show_bar=not args.quiet)


def _expand(args: argparse.Namespace) -> list[str]:
    from ..tasks import expand_inputs

    paths = expand_inputs(args.inputs)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.inputs)}")
    return paths


def _run_options(args: argparse.Namespace, progress) -> dict:
    return dict(image_size=args.image_size, batch_size=args.batch_size, workers=args.workers,
                transform=args.transform, max_pixels=args.max_pixels, progress=progress)


# ------------------------------------------------------------------------------------- classify
class _TablePrinter:
    """One line per class: the path on the first line of each image; failures as ``ERROR: reason``."""

    def __init__(self, paths: list[str], write):
        self.width = min(max(len(p) for p in paths), 60)
        self.write = write
        self.write(f"{'PATH':<{self.width}}  {'#':>2}  {'PROB':>7}  CLASS")

    def __call__(self, result) -> None:
        path = printable_path(result.path)
        if result.error:
            self.write(f"{path:<{self.width}}  ERROR: {result.error}")
            return
        for rank, (index, label, prob) in enumerate(result.top_k, start=1):
            shown = path if rank == 1 else ""
            self.write(f"{shown:<{self.width}}  {rank:>2}  {prob:7.2%}  {label} ({index})")


class _JsonLinesPrinter:
    """One JSON object per image and line: ``{"path", "top_k": [{"index", "label", "probability"}], "error"}``."""

    def __init__(self, paths: list[str], write):
        self.write = write

    def __call__(self, result) -> None:
        top = [{"index": i, "label": label, "probability": p} for i, label, p in result.top_k]
        record = {"path": printable_path(result.path), "top_k": top, "error": result.error}
        self.write(json.dumps(record, ensure_ascii=False))


class _CsvPrinter:
    """Columns ``path,rank,index,label,probability,error``: one row per class, one per failure."""

    COLUMNS = ["path", "rank", "index", "label", "probability", "error"]

    def __init__(self, paths: list[str], write):
        self.write = write
        self._row(self.COLUMNS)

    def _row(self, values) -> None:
        line = _CsvLine()
        csv.writer(line, lineterminator="").writerow(values)
        self.write(line.text)

    def __call__(self, result) -> None:
        path = printable_path(result.path)
        if result.error:
            self._row([path, "", "", "", "", result.error])
        for rank, (index, label, prob) in enumerate(result.top_k, start=1):
            self._row([path, rank, index, label, repr(prob), ""])


class _CsvLine:
    text = ""

    def write(self, text: str) -> None:
        self.text += text


def _cmd_classify(args: argparse.Namespace) -> int:
    from ..tasks import classify_paths

    if args.engine == "ray":
        return _cmd_classify_ray(args)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    paths = _expand(args)
    model, _ = _load_model(args)
    progress = _progress(args)
    return print_classifications(args, paths, progress, lambda: classify_paths(
        model, paths, top_k=args.top_k, **_run_options(args, progress), **_backend_options(args, model)))


def print_classifications(args: argparse.Namespace, paths: list[str], progress, results) -> int:
    """Print ``results()`` (an iterable of Classification, made inside so that an interrupt while it
    starts is handled too) in the style ``args`` asks for; the exit status of ``pnasnet classify``
    (either engine)."""
    printer_class = _JsonLinesPrinter if args.json else _CsvPrinter if args.csv else _TablePrinter
    printer = printer_class(paths, progress.write)
    failed = 0
    try:
        for result in results():
            printer(result)
            failed += result.error is not None
    except KeyboardInterrupt:
        print("pnasnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`pnasnet classify ... | head`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so that Python's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        progress.close()
    if failed:
        print(f"pnasnet: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------- features
def _cmd_features(args: argparse.Namespace) -> int:
    from ..tasks import extract_features

    if args.engine == "ray":
        return _cmd_features_ray(args)
    from ..tasks.formats import output_for

    output_for(args.out)  # an unknown output format is refused before the weights are fetched
    paths = _expand(args)
    model, described = _load_model(args)
    try:
        summary = extract_features(
            model, paths, args.out, model_name=args.model, weights=described, overwrite=args.overwrite,
            chunk_size=args.chunk_size, **_backend_options(args, model), **_run_options(args, _progress(args)))
    except KeyboardInterrupt:
        print("pnasnet: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report_features_summary(args, summary, ", ".join(str(f) for f in summary.files))


def report_features_summary(args: argparse.Namespace, summary, written_to: str) -> int:
    """The closing lines of ``pnasnet features`` (either engine) and its exit status."""
    if not args.quiet:
        reused = summary.total - summary.computed
        note = f" ({reused} from an earlier run)" if reused else ""
        print(f"pnasnet: {summary.written} of {summary.total} vectors{note} -> {written_to}", file=sys.stderr)
    if summary.failed:
        print(f"pnasnet: {len(summary.failed)} of {summary.total} inputs could not be read "
              "(listed in the output with the reason)", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


# ----------------------------------------------------------------------- --engine ray (Ray Data)
def _ray_options(args: argparse.Namespace) -> dict:
    return dict(transform=args.transform, image_size=args.image_size, batch_size=args.batch_size,
                max_pixels=args.max_pixels, address=args.address, concurrency=args.concurrency,
                cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, threads=args.threads,
                device=args.device, backend=args.backend, precision=args.precision, quiet=args.quiet)


def _ray_inputs(args: argparse.Namespace) -> list[str]:
    from ..engines.sources import expand_sources

    paths = expand_sources(args.inputs)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.inputs)}")
    return paths


def _driver_model(args: argparse.Namespace):
    """The model as the local commands load it, kept on the CPU here: it is shipped to the actors."""
    device, args.device = args.device, "cpu"
    try:
        model, described = _load_model(args)
    finally:
        args.device = device
    return model, described


def _cmd_features_ray(args: argparse.Namespace) -> int:
    from ..engines.ray_data import extract_features_ray, import_ray
    from ..tasks import TqdmProgress

    import_ray()  # fail now, not after loading the model, if Ray Data is missing

    paths = _ray_inputs(args)
    model, described = _driver_model(args)
    try:
        summary = extract_features_ray(model, paths, args.out, model_name=args.model, weights=described,
                                       overwrite=args.overwrite, chunk_size=args.chunk_size,
                                       progress=TqdmProgress(show_bar=not args.quiet), **_ray_options(args))
    except KeyboardInterrupt:
        print("pnasnet: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report_features_summary(args, summary, f"{args.out} ({len(summary.files)} Parquet files)")


def _cmd_classify_ray(args: argparse.Namespace) -> int:
    from ..engines.ray_data import classify_paths_ray, import_ray
    from ..tasks import TqdmProgress

    import_ray()

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    paths = _ray_inputs(args)
    model, _ = _driver_model(args)
    progress = TqdmProgress(show_bar=not args.quiet)
    return print_classifications(args, paths, progress, lambda: classify_paths_ray(
        model, paths, top_k=args.top_k, progress=progress, **_ray_options(args)))


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    """Register this group's subcommands on the top-level parser."""
    from ..tasks.extract import DEFAULT_CHUNK_SIZE

    classify = sub.add_parser("classify", help="top-k ImageNet classes of images",
                              description="Print the top-k ImageNet classes of each image.")
    _add_common_options(classify)
    classify.add_argument("--top-k", type=int, default=5, help="classes per image (default %(default)s)")
    style = classify.add_mutually_exclusive_group()
    style.add_argument("--json", action="store_true", help="JSON Lines: one object per image")
    style.add_argument("--csv", action="store_true", help="CSV: path,rank,index,label,probability,error")
    classify.set_defaults(func=_cmd_classify)

    features = sub.add_parser(
        "features", help="feature vectors of images into .parquet or .npy (resumable)",
        description="Write the feature vector of each image to OUT. Interrupted runs resume when the same "
                    "command is run again; unreadable inputs are listed with the reason.")
    _add_common_options(features)
    features.add_argument("--out", required=True, help="OUT.parquet (path, features, error; run metadata) or "
                                                       "OUT.npy (+ OUT.index.csv, OUT.meta.json); with --engine ray, "
                                                       "a folder or URI of Parquet files")
    features.add_argument("--overwrite", action="store_true",
                          help="start over, even if OUT or an unfinished run was made by another model/weights")
    features.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                          help="images per saved chunk: the most a kill can lose (default %(default)s; "
                               "a chunk is also saved every minute)")
    features.set_defaults(func=_cmd_features)
