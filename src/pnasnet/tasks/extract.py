"""``extract_features``: feature vectors of many images into a file, resumably.

The run writes chunks into ``OUT.partial/`` (:mod:`pnasnet.tasks.chunks`) and, at the end,
assembles the output (:mod:`pnasnet.tasks.formats`) and moves it into place. Run again after a
kill or crash, the same call computes only what is missing: inputs with a vector in the chunks or
in an existing ``OUT`` made by the same model, weights and preprocessing are reused; inputs that
failed before are tried again. The output holds each input of the call exactly once (rows for paths
no longer among the inputs are dropped), in the order the rows were computed: the input order,
except that images re-tried or added on a later run come after the rest.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from ..data import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch
from ..model import PNASNet
from .batches import TRANSFORMS
from .chunks import ChunkFolder
from .formats import FeaturesOutput, output_for
from .inference import DEFAULT_BATCH_SIZE, feature_blocks, model_image_size, prepare_model
from .progress import Progress
from .rows import RowBlock
from .run_info import RunInfo

__all__ = ["FeaturesSummary", "extract_features"]

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_FLUSH_SECONDS = 60.0


@dataclass
class FeaturesSummary:
    """``failed``: ``(path, reason)`` of every input without a vector in the output."""

    files: list[Path]
    total: int
    computed: int               # inputs processed by this call (the rest came from earlier runs)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.total - len(self.failed)


Rows = dict[str, tuple[int, "str | None"]]  # path -> (number of its newest source, error or None)


def _sources(previous: FeaturesOutput | None, folder: ChunkFolder, *,
             with_features: bool) -> Iterator[tuple[int, RowBlock]]:
    """``(source number, block)`` over the earlier output (source 0) and the chunks, in age order."""
    if previous is not None:
        for block in previous.iter_blocks(with_features=with_features):
            yield 0, block
    for number, chunk in enumerate(folder.chunks(), start=1):
        yield number, folder.read_chunk(chunk, with_features=with_features)


def _latest_rows(previous: FeaturesOutput | None, folder: ChunkFolder, wanted: set[str]) -> Rows:
    """For each wanted path, its newest row: ``(source number, error or None)``."""
    latest: Rows = {}
    for number, block in _sources(previous, folder, with_features=False):
        for path, error in zip(block.paths, block.errors):
            if path in wanted:
                latest[path] = (number, error)
    return latest


def _final_blocks(previous: FeaturesOutput | None, folder: ChunkFolder, latest: Rows) -> Iterator[RowBlock]:
    """Every source's rows that are the newest for a wanted path, each path once."""
    written: set[str] = set()
    for number, block in _sources(previous, folder, with_features=True):
        keep = []
        for path in block.paths:
            newest = path not in written and latest.get(path, (None,))[0] == number
            keep.append(newest)
            if newest:
                written.add(path)
        yield block.select(keep)


def _save_in_chunks(blocks: Iterator[RowBlock], folder: ChunkFolder, chunk_size: int, flush_seconds: float,
                    num_features: int) -> None:
    buffered: list[RowBlock] = []
    last_save = time.monotonic()

    def save() -> None:
        nonlocal buffered, last_save
        if buffered:
            folder.write_chunk(RowBlock.concat(buffered, num_features))
        buffered, last_save = [], time.monotonic()

    try:
        for block in blocks:
            buffered.append(block)
            if sum(map(len, buffered)) >= chunk_size or time.monotonic() - last_save >= flush_seconds:
                save()
    except BaseException:
        save()  # Ctrl-C or a failing batch: the rows already computed are complete, keep them
        raise
    save()


def extract_features(model: PNASNet, paths: Sequence[str], out: str | os.PathLike, *,
                     model_name: str | None = None, weights: str | None = None, transform: str = "tf-slim",
                     image_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     overwrite: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     flush_seconds: float = DEFAULT_FLUSH_SECONDS, backend: str = "auto",
                     precision: str = "float32", in_place: bool = False,
                     calibration: torch.Tensor | None = None,
                     progress: Progress | None = None) -> FeaturesSummary:
    """Write the feature vector of each of ``paths`` to ``out`` (``.parquet`` or ``.npy``; see
    :mod:`pnasnet.tasks.formats`), resuming an interrupted run of the same model, weights and
    preprocessing, and refusing (:class:`~pnasnet.tasks.run_info.OutputMismatchError`) to mix
    with another's unless ``overwrite``.

    ``model_name``, ``weights``: recorded in the output's metadata (default: the model's variant
    name, "not recorded"); the parameters themselves are identified by their SHA-256.
    ``chunk_size``, ``flush_seconds``: a chunk is saved every ``chunk_size`` images or
    ``flush_seconds`` seconds, whichever comes first; that bounds the work a kill can lose.
    ``backend``, ``precision``, ``in_place``, ``calibration``: how the model runs (default the exact fast path; see
    :func:`~pnasnet.tasks.inference.prepare_model`); a run resumes only at the same precision.
    Other options as in :func:`~pnasnet.tasks.inference.run_model`.
    """
    from ..inference import InferenceModel, backend_of, check_backend_choice

    if isinstance(model, InferenceModel):
        raise TypeError("extract_features takes the model itself (pnasnet.create_model), not an optimized one: "
                        "pass backend=/precision= instead, so the output can record the weights' SHA-256")
    # A back end or precision this install or CPU cannot run is refused before the output is touched.
    check_backend_choice(backend, precision, device=next(model.parameters()).device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if transform not in TRANSFORMS:  # before anything is recorded under this name
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
    paths = list(dict.fromkeys(os.fspath(p) for p in paths))
    output = output_for(out)
    size = model_image_size(model, image_size)
    info = RunInfo.for_model(model, model_name=model_name, weights=weights, transform=transform, image_size=size,
                             precision=precision)
    output.path.parent.mkdir(parents=True, exist_ok=True)
    wanted = set(paths)
    with ChunkFolder.open(output.work_dir) as folder:
        try:
            previous = output if output.exists() and not overwrite else None
            if previous is not None:
                info.check_same_as(previous.read_info(), str(output.path))
            folder.claim(info, overwrite=overwrite)
        except BaseException:
            folder.remove_if_unused()
            raise
        latest = _latest_rows(previous, folder, wanted)
        pending = [p for p in paths if latest.get(p, (None, "missing"))[1] is not None]

        runnable = (prepare_model(model, backend, precision, image_size=size, in_place=in_place,
                                  calibration=calibration) if pending else model)
        if pending:
            info = replace(info, backend=backend_of(runnable))
        blocks = feature_blocks(runnable, pending, backend="plain", image_size=size, batch_size=batch_size, workers=workers,
                                transform=transform, max_pixels=max_pixels, progress=progress,
                                already_done=len(paths) - len(pending))
        try:
            _save_in_chunks(blocks, folder, chunk_size, flush_seconds, model.num_features)
        finally:
            if progress is not None:
                progress.close()

        latest = _latest_rows(previous, folder, wanted)
        staging = folder.staging_dir()
        num_ok = sum(error is None for _, error in latest.values())
        output.write(staging, info, _final_blocks(previous, folder, latest), num_ok)
        folder.publish(output.files)

    failed = [(p, latest[p][1]) for p in paths if latest[p][1] is not None]
    return FeaturesSummary(files=list(output.files.values()), total=len(paths), computed=len(pending),
                           failed=failed)
