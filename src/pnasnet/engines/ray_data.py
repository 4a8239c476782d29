"""Batch inference on Ray Data: ``extract_features_ray`` and ``classify_paths_ray``.

The pipeline (one streaming Ray Data job)::

    paths (blocks of B)  ->  decode: Ray tasks, 1 CPU each   ->  model: actor pool       ->  write: Ray tasks  ->  driver
    from the driver          bytes -> image, or error row       loaded once per actor       one Parquet part     progress,
                             (never raises)                     (CPU threads / GPUs)        per chunk_size rows  summary

* **Inputs**: the driver expands the sources (local paths, globs, ``@LIST``, or URIs: see
  :mod:`pnasnet.engines.sources`) and hands Ray only the inputs still missing from the output. The
  decode tasks read each file themselves (a local path through the single-machine command's own
  decoder; a URI through pyarrow's filesystems) inside a try/except, so a missing, unreadable or
  corrupt file becomes an error row with its reason (for a local path, the single-machine output's
  very reason), and never fails the job. (``ray.data.read_binary_files`` would abort the whole job on a file that vanished
  or cannot be opened, and ``read_images`` on any undecodable one.)
* **Model**: the driver's model is put into the object store once; each actor takes it in its
  constructor, so every actor on every node runs exactly the parameters recorded in the output's
  metadata (no weights file needed on the workers). The pool autoscales between ``min`` and ``max``
  actors. On a CPU cluster each actor asks for ``cpus_per_actor`` CPUs; the pool is sized (and, if
  asked for more, the per-actor CPU request scaled down) so that at least one CPU stays free for
  decoding: a pool that reserves every CPU starves the decode tasks and hangs without a word.
* **Output** (features): write tasks turn the rows into Parquet parts of about ``chunk_size`` rows,
  named by their content and written atomically (:mod:`pnasnet.engines.parquet_folder`), so a task
  or actor that Ray retries rewrites the same part instead of adding one. When the job ends the
  driver removes any row a retry left twice: every input has exactly one row.
* **Faults**: Ray Data restarts a dead actor (process killed, node lost) and reruns its batches;
  tasks are retried on worker death. A job killed outright (the driver) is resumed by running it
  again: inputs already in the output are skipped, failed ones are tried again.

Ray is imported only here, and only when one of these functions runs.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..data import DEFAULT_MAX_PIXELS
from ..tasks.batches import TRANSFORMS
from ..tasks.extract import DEFAULT_CHUNK_SIZE, FeaturesSummary
from ..tasks.inference import DEFAULT_BATCH_SIZE, Classification, model_image_size
from ..tasks.inputs import printable_path
from ..tasks.progress import Progress
from ..tasks.run_info import RunInfo
from .parquet_folder import ParquetFolderOutput, part_table
from .sources import decode_source, is_uri

__all__ = ["PoolSize", "RayNotInstalledError", "classify_paths_ray", "extract_features_ray", "ray_session"]

#: CPUs each decode task asks for.
DECODE_CPUS = 1.0
#: CPUs each write task asks for: little, so that parts get written (and a kill loses little) even
#: while the decoders and the actors hold every CPU.
WRITE_CPUS = 0.25
#: Inputs per block handed to a decode task, at most (fewer for small jobs, to spread them out).
MAX_PATHS_PER_BLOCK = 256


class RayNotInstalledError(ImportError, RuntimeError):
    """Ray Data is missing (a RuntimeError too, so the command line reports it as a usage error)."""

    def __init__(self) -> None:
        super().__init__("--engine ray needs Ray Data: pip install 'pnasnet[ray]' (or pip install 'ray[data]')")


def import_ray():
    """``ray``, with Ray Data imported; :class:`RayNotInstalledError` if it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayNotInstalledError() from error
    return ray


class RayUnresponsive(RuntimeError):
    """Ray stopped answering while we stopped it (its local processes were killed by the same
    signal); the caller should leave the process without Ray's exit hooks (``os._exit``), which
    would wait for it too."""


@contextmanager
def ray_session(address: str | None = None, *, quiet: bool = False) -> Iterator[Any]:
    """Use the Ray that this process is already connected to; else connect to ``address`` (or
    ``RAY_ADDRESS``; ``"auto"`` finds a cluster started with ``ray start`` on this machine), or, with
    neither, start a local Ray with this machine's CPUs and GPUs. Disconnects (stopping a local Ray
    it started) at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"address": address, "log_to_driver": True,
                               "logging_level": logging.WARNING if quiet else logging.INFO}
    if address is None:
        options["include_dashboard"] = False
    ray.init(**options)
    try:
        yield ray
    except RayUnresponsive:
        raise  # Ray is gone: ray.shutdown() would wait forever
    except BaseException:
        ray.shutdown()
        raise
    else:
        ray.shutdown()


@dataclass(frozen=True)
class PoolSize:
    """Model actors: between ``min`` and ``max`` (equal: a fixed pool)."""

    min: int
    max: int

    @classmethod
    def parse(cls, text: str | int | None) -> "PoolSize | None":
        """``"4"`` (autoscale 1..4), ``"2:8"`` (2..8), ``"3:3"`` (fixed); ``None`` stays None."""
        if text is None or isinstance(text, PoolSize):
            return text
        lo, sep, hi = str(text).partition(":")
        try:
            low, high = (int(lo), int(hi)) if sep else (1, int(lo))
        except ValueError:
            raise ValueError(f"concurrency must be N or MIN:MAX (whole numbers), got {text!r}") from None
        if low < 1 or high < low:
            raise ValueError(f"concurrency must have 1 <= MIN <= MAX, got {text!r}")
        return cls(low, high)


@dataclass(frozen=True)
class _Plan:
    pool: PoolSize
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    device: str
    backend: str = "auto"       # how each actor runs the model (pnasnet.inference.for_inference)
    precision: str = "float32"


def _decode_reserve(cpus: float) -> float:
    """CPUs the default pool leaves to decoding: one, and an eighth of a bigger cluster (decoding and
    cropping a photo takes 10-20 ms, a Mobile forward pass ~100 ms on one thread)."""
    return max(DECODE_CPUS, math.ceil(cpus / 8))


def _plan(ray, concurrency: PoolSize | None, cpus_per_actor: float, gpus_per_actor: float | None,
          threads: int | None, device: str | None, backend: str = "auto", precision: str = "float32") -> _Plan:
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    from ..inference import check_backend_choice

    if precision == "int8":
        raise ValueError("precision int8 is not offered with --engine ray yet (it needs calibration images in "
                         "every actor); use --engine local, or float32 / bfloat16")
    check_backend_choice(backend, precision)  # here, not in every actor
    if gpus_per_actor is None:  # a GPU per actor where the cluster has GPUs, unless told --device cpu
        gpus_per_actor = 1.0 if gpus >= 1 and not (device or "").startswith("cpu") else 0.0
    if cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise ValueError("cpus per actor must be > 0 and GPUs per actor >= 0")
    if gpus_per_actor == 0 and (device or "").startswith("cuda"):
        raise ValueError(f"--device {device} needs GPUs in the actors: pass --gpus-per-actor (Ray hides the GPUs "
                         "from actors that reserve none)")
    if gpus_per_actor > 0:
        if gpus < gpus_per_actor:
            raise ValueError(f"{gpus_per_actor} GPU(s) per actor asked for, but the Ray cluster has {gpus:g} GPUs")
        default_max = max(1, int(gpus // gpus_per_actor))
    else:
        default_max = max(1, int((cpus - _decode_reserve(cpus)) // cpus_per_actor))
    pool = concurrency or PoolSize(1, default_max)
    spare = cpus - DECODE_CPUS
    # (A cluster with no CPUs yet is one whose autoscaler adds nodes on demand: nothing to fit into.)
    if cpus >= 1 and pool.max * cpus_per_actor > spare:
        # A pool that can take every CPU leaves the decode tasks none and the job hangs silently.
        fitted = max(spare, 0.1) / pool.max
        if cpus_per_actor > fitted:
            warnings.warn(f"{pool.max} actor(s) x {cpus_per_actor:g} CPU would leave no CPU for decoding on this "
                          f"{cpus:g}-CPU Ray cluster; asking for {fitted:.2f} CPU per actor instead", stacklevel=3)
            cpus_per_actor = round(fitted, 4)
    torch_threads = threads or max(1, int(cpus_per_actor))
    return _Plan(pool, cpus_per_actor, gpus_per_actor, torch_threads,
                 device or ("cuda" if gpus_per_actor > 0 else "cpu"), backend, precision)


# ------------------------------------------------------------------------------------- stages
def _bytes(path: str) -> bytes:
    """Paths travel as bytes: Arrow strings must be UTF-8, and a POSIX file name need not be."""
    return path.encode("utf-8", "surrogateescape")


def _text(data) -> str:
    return bytes(data).decode("utf-8", "surrogateescape")


def _decode(batch: dict, *, size: int, transform: str, max_pixels: int | None) -> dict:
    """Ray task: decode each input, never raising. ``path`` (as given, for the output) and ``file``
    (absolute: a worker's current directory is not the driver's) arrive as bytes (:func:`_text`)."""
    files = [_text(f) for f in batch["file"]]
    images = np.zeros((len(files), 3, size, size), np.float32)
    errors = []
    for i, file in enumerate(files):
        image, error = decode_source(file, size, transform=transform, max_pixels=max_pixels)
        if image is not None:
            images[i] = image.numpy()
        errors.append(error or "")
    return {"path": batch["path"], "error": np.array(errors, dtype=object), "image": images}


class _ModelActor:
    """Ray actor: the model, received once from the object store; ``__call__`` runs one batch."""

    def __init__(self, model_ref: list, mode: str, device: str, threads: int, top_k: int,
                 backend: str = "auto", precision: str = "float32", image_size: int | None = None):
        import ray
        import torch

        from ..inference import for_inference

        torch.set_num_threads(threads)
        model = ray.get(model_ref[0])
        # the actor's own copy: converted in place, so its weights are held once
        self.model = for_inference(model.to(device).eval(), backend, precision, image_size=image_size,
                                   in_place=True)
        self.device = torch.device(device)
        self.mode = mode
        self.top_k = top_k

    def __call__(self, batch: dict) -> dict:
        import torch

        errors = [str(e) for e in batch["error"]]
        good = np.array([e == "" for e in errors], dtype=bool)
        images = np.asarray(batch["image"])[good]
        outputs = None
        if len(images):
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
                compute = self.model.features if self.mode == "features" else self.model.classify
                outputs = compute(x).float().cpu()
        n = len(errors)
        result = {"path": batch["path"], "error": np.array(errors, dtype=object)}
        if self.mode == "features":
            features = np.zeros((n, self.model.num_features), np.float32)
            if outputs is not None:
                features[good] = outputs.numpy()
            result["features"] = features
        else:
            k = min(self.top_k, self.model.num_classes)
            index, prob = np.zeros((n, k), np.int64), np.zeros((n, k), np.float64)
            if outputs is not None:
                values, indices = torch.topk(torch.softmax(outputs.to(torch.float64), dim=1), k, dim=1)
                index[good], prob[good] = indices.numpy(), values.numpy()
            result["top_index"], result["top_prob"] = index, prob
        return result


def _write(batch: dict, *, location: str, info_json: str) -> dict:
    """Ray task: one Parquet part from the rows (a path met twice in a batch, from a retried
    block, is written once). Returns the rows' paths and errors for the driver."""
    info = RunInfo.from_json(info_json)
    raw = [bytes(p) for p in batch["path"]]  # as given
    seen: dict[bytes, int] = {}
    for i, p in enumerate(raw):
        seen.setdefault(p, i)
    rows = sorted(seen.values())
    paths = [_text(raw[i]) for i in rows]
    errors = [str(batch["error"][i]) or None for i in rows]
    features = np.asarray(batch["features"])[rows]
    if paths:
        ParquetFolderOutput(location).write_part(part_table(info, paths, errors, features))
    return {"path": np.array([raw[i] for i in rows], dtype=object),
            "error": np.array([e or "" for e in errors], dtype=object)}


# ------------------------------------------------------------------------------------- the job
def _paths_dataset(ray, paths: Sequence[str], parallelism: int):
    """Blocks of paths (as bytes) for the decode tasks: small enough to spread over the cluster."""
    import pyarrow as pa

    per_block = max(1, min(MAX_PATHS_PER_BLOCK, math.ceil(len(paths) / max(1, 4 * parallelism))))
    given = [_bytes(p) for p in paths]
    files = [_bytes(p if is_uri(p) else os.path.abspath(p)) for p in paths]
    tables = [pa.table({"path": pa.array(given[i: i + per_block], pa.binary()),
                        "file": pa.array(files[i: i + per_block], pa.binary())})
              for i in range(0, len(paths), per_block)]
    return ray.data.from_arrow(tables)


def _decode_memory(batch_size: int, size: int) -> int:
    """Bytes a decode task reserves: a worker with torch and Pillow loaded (~250 MB) and its batch of
    float32 images a few times over. Besides bounding how many run at once, a request the actors do not make keeps Ray
    Data from fusing decoding into the model actors (it fuses a task stage into the next actor
    stage when their resource requests match), so decoding stays on other CPUs, in tasks."""
    return int(384 * 2**20 + 4 * batch_size * 3 * size * size * 4)


def _model_stage(ray, dataset, model_ref, mode: str, plan: _Plan, batch_size: int, size: int, top_k: int = 0):
    compute = ray.data.ActorPoolStrategy(min_size=plan.pool.min, max_size=plan.pool.max)
    return dataset.map_batches(
        _ModelActor, batch_size=batch_size, compute=compute, batch_format="numpy",
        # the reference inside a list: the actor fetches it itself (ray.get), once
        fn_constructor_kwargs=dict(model_ref=[model_ref], mode=mode, device=plan.device, threads=plan.threads,
                                   top_k=top_k, backend=plan.backend, precision=plan.precision, image_size=size),
        num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor or None)


def _pipeline(ray, model_ref, paths: Sequence[str], mode: str, *, size: int, transform: str, batch_size: int,
              max_pixels: int | None, plan: _Plan, top_k: int = 0):
    """The rows as the model actors return them. ``model_ref`` (``ray.put(model)``) must stay
    referenced by the caller until the rows are consumed: a restarted actor fetches it again."""
    dataset = _paths_dataset(ray, paths, max(1, plan.pool.max))
    decoded = dataset.map_batches(_decode, batch_size=batch_size, batch_format="numpy",
                                  fn_kwargs=dict(size=size, transform=transform, max_pixels=max_pixels),
                                  num_cpus=DECODE_CPUS, memory=_decode_memory(batch_size, size))
    return _model_stage(ray, decoded, model_ref, mode, plan, batch_size, size, top_k)


@contextmanager
def _data_context(ray, *, preserve_order: bool):
    """Ray Data settings for one job, restored afterwards: our own progress (or none) instead of
    Ray's bars; Ray Data's INFO lines (execution plan, progress) only in its log file
    (``/tmp/ray/session_latest/logs/ray-data/``), warnings still on the terminal."""
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = preserve_order
    context.enable_progress_bars = False
    consoles = [h for h in logging.getLogger("ray.data").handlers if "File" not in type(h).__name__]
    levels = [h.level for h in consoles]
    progress_logger = logging.getLogger("ray.data._internal.progress")
    progress_level = progress_logger.level
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    progress_logger.setLevel(logging.ERROR)  # its one warning says "progress bars disabled": we know
    try:
        yield context
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)
        progress_logger.setLevel(progress_level)


def _cpu_model(model):
    """The model on the CPU, to be shipped to the actors (a copy if it is elsewhere: the caller's
    model stays where it is)."""
    import copy

    import torch

    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    return model if devices <= {torch.device("cpu")} else copy.deepcopy(model).to("cpu")


def _check_options(transform: str, batch_size: int, chunk_size: int) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")


def extract_features_ray(model, paths: Sequence[str], out: str | os.PathLike, *,
                         model_name: str | None = None, weights: str | None = None, transform: str = "tf-slim",
                         image_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                         max_pixels: int | None = DEFAULT_MAX_PIXELS, overwrite: bool = False,
                         chunk_size: int = DEFAULT_CHUNK_SIZE, address: str | None = None,
                         concurrency: PoolSize | str | int | None = None, cpus_per_actor: float = 1.0,
                         gpus_per_actor: float | None = None, threads: int | None = None, device: str | None = None,
                         backend: str = "auto", precision: str = "float32",
                         progress: Progress | None = None, quiet: bool = False) -> FeaturesSummary:
    """The feature vector of each of ``paths`` into the Parquet folder ``out`` (a local folder
    or a URI such as ``s3://bucket/feats/``), on Ray Data; resumable. Same rows, errors and metadata
    as :func:`pnasnet.tasks.extract_features` (see :mod:`pnasnet.engines.parquet_folder`).

    ``paths``: from :func:`pnasnet.engines.expand_sources` (local paths or URIs, readable from every
    node). ``out``: on a multi-node cluster, a shared filesystem or an object store.
    ``concurrency``: model actors, ``N`` (autoscaling 1..N) or ``"MIN:MAX"`` (default: one per GPU,
    or one per CPU leaving 1 CPU in 8, at least one, to decoding). ``cpus_per_actor`` /
    ``gpus_per_actor``: what each actor reserves (GPUs default: 1 where the cluster has GPUs, else
    0); ``threads``: PyTorch threads per actor (default: its CPUs); ``device``: default ``cuda``
    for actors with GPUs, else ``cpu``. ``backend``, ``precision``: how each actor runs the model
    (as in ``extract_features``). ``address``: the Ray cluster (default ``RAY_ADDRESS``, else a local Ray; an
    already connected process uses its connection). Other options as in ``extract_features``;
    ``chunk_size``: rows per Parquet part. Returns a
    :class:`~pnasnet.tasks.extract.FeaturesSummary` whose ``files`` are the parts.
    """
    _check_options(transform, batch_size, chunk_size)
    paths = list(dict.fromkeys(os.fspath(p) for p in paths))
    size = model_image_size(model, image_size)
    info = RunInfo.for_model(model, model_name=model_name, weights=weights, transform=transform, image_size=size,
                             precision=precision,
                             # each actor runs for_inference itself; with auto, on its own machine's choice
                             backend=f"{backend} {precision}" + (" (chosen by each actor)" if backend == "auto" else ""))
    output = ParquetFolderOutput(out)
    output.open_for_run(info, overwrite=overwrite)
    try:
        done = output.latest_rows()
        pending = [p for p in paths if (row := done.get(printable_path(p))) is None or row.error is not None]
        output.retire_failures(printable_path(p) for p in pending if printable_path(p) in done)
        if progress is not None:
            progress.start(len(paths), len(paths) - len(pending))
        if pending:
            with ray_session(address, quiet=quiet) as ray:
                plan = _plan(ray, PoolSize.parse(concurrency), cpus_per_actor, gpus_per_actor, threads, device,
                             backend, precision)
                with _data_context(ray, preserve_order=False):
                    model_ref = ray.put(_cpu_model(model))
                    rows = _pipeline(ray, model_ref, pending, "features", size=size, transform=transform,
                                     batch_size=batch_size, max_pixels=max_pixels, plan=plan)
                    written = rows.map_batches(_write, batch_size=chunk_size, batch_format="numpy", num_cpus=WRITE_CPUS,
                                               fn_kwargs=dict(location=output.absolute, info_json=info.to_json()))
                    for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
                        if progress is not None:
                            progress.advance([_text(p) for p in batch["path"]], [str(e) or None for e in batch["error"]])
                    del model_ref
        output.deduplicate()
        latest = output.latest_rows()
    finally:
        output.close()
        if progress is not None:
            progress.close()
    failed = []
    for p in paths:
        row = latest.get(printable_path(p))
        if row is None:  # cannot happen unless a part vanished under us; never report it as done
            failed.append((p, "no row was written for this input"))
        elif row.error is not None:
            failed.append((p, row.error))
    return FeaturesSummary(files=list(output.files.values()), total=len(paths), computed=len(pending), failed=failed)


def _labels_for(model, labels: Sequence[str] | None) -> list[str]:
    """The names ``classify_paths`` would print."""
    from ..data.labels import imagenet_labels

    if labels is None:
        labels = getattr(model, "labels", None)
    if labels is None and model.num_classes not in (1000, 1001):
        labels = [str(i) for i in range(model.num_classes)]
    if labels is None:
        labels = imagenet_labels(background=model.num_classes == 1001)
    return list(labels)


def classify_paths_ray(model, paths: Sequence[str], *, top_k: int = 5, labels: Sequence[str] | None = None,
                       transform: str = "tf-slim", image_size: int | None = None,
                       batch_size: int = DEFAULT_BATCH_SIZE, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       address: str | None = None, concurrency: PoolSize | str | int | None = None,
                       cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None, threads: int | None = None,
                       device: str | None = None, backend: str = "auto", precision: str = "float32",
                       progress: Progress | None = None, quiet: bool = False) -> Iterator[Classification]:
    """Top-``top_k`` classes of each image on Ray Data, lazily and in input order, one result per
    path, as :func:`pnasnet.tasks.classify_paths` gives them (probabilities a float64 softmax over
    all classes). Ray options as in :func:`extract_features_ray`."""
    if model.num_classes == 0:
        raise ValueError(f"{model.config.name} feature-vector models have no classifier; use features")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    _check_options(transform, batch_size, 1)
    names = _labels_for(model, labels)
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} labels given for a model with {model.num_classes} classes")
    size = model_image_size(model, image_size)
    paths = [os.fspath(p) for p in paths]
    return _classifications(model, paths, names, top_k, size=size, transform=transform, batch_size=batch_size,
                            max_pixels=max_pixels, address=address, concurrency=concurrency,
                            cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, threads=threads,
                            device=device, backend=backend, precision=precision, progress=progress, quiet=quiet)


def _classifications(model, paths, names, top_k, *, size, transform, batch_size, max_pixels, address, concurrency,
                     cpus_per_actor, gpus_per_actor, threads, device, backend, precision, progress,
                     quiet) -> Iterator[Classification]:
    if progress is not None:
        progress.start(len(paths), 0)
    try:
        if not paths:
            return
        with ray_session(address, quiet=quiet) as ray:
            plan = _plan(ray, PoolSize.parse(concurrency), cpus_per_actor, gpus_per_actor, threads, device,
                         backend, precision)
            with _data_context(ray, preserve_order=True):
                model_ref = ray.put(_cpu_model(model))
                rows = _pipeline(ray, model_ref, paths, "classify", size=size, transform=transform,
                                 batch_size=batch_size, max_pixels=max_pixels, plan=plan, top_k=top_k)
                for batch in rows.iter_batches(batch_size=None, batch_format="numpy"):
                    batch_paths = [_text(b) for b in batch["path"]]
                    batch_errors = [str(e) or None for e in batch["error"]]
                    for path, error, index, prob in zip(batch_paths, batch_errors, batch["top_index"],
                                                        batch["top_prob"]):
                        if error is not None:
                            yield Classification(path, [], error)
                        else:
                            yield Classification(path, [(int(i), names[int(i)], float(p))
                                                        for i, p in zip(index.tolist(), prob.tolist())])
                    if progress is not None:
                        progress.advance(batch_paths, batch_errors)
                del model_ref
    finally:
        if progress is not None:
            progress.close()
