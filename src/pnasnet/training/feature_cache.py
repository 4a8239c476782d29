"""Feature vectors for head training, cached on disk by file content, weights and preprocessing.

Layout under the cache folder (default ``<pnasnet cache>/train-features``)::

    <key>/                      one per (parameters SHA-256, model, transform, image size)
        info.json               what the key stands for
        vectors-<id>.npz        sha256 (file contents, hex) -> feature vector, one file per run
        pending-<id>.npy ...    the run computing the missing vectors (resumable; removed after)

A file is looked up by the SHA-256 of its bytes, so renamed, moved or copied images are not
computed again and an edited image is. The missing vectors are computed with
:func:`pnasnet.tasks.extract_features`, which saves its work in chunks: a run killed half way
continues from there when started again. Unreadable files are reported, never cached (they are
tried again next time).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic_files import atomic_path
from ..data import DEFAULT_MAX_PIXELS
from ..model import PNASNet
from ..tasks import extract_features, parameters_sha256
from ..tasks.formats import output_for
from ..tasks.inference import model_image_size
from ..tasks.inputs import printable_path
from ..tasks.progress import Progress
from ..weights.cache import sha256_file

__all__ = ["CachedFeatures", "cached_features", "default_feature_cache_dir"]


def default_feature_cache_dir() -> Path:
    from ..weights.download import cache_dir

    return cache_dir() / "train-features"


@dataclass
class CachedFeatures:
    """``vectors[path]`` for each readable input; ``failed``: ``(path, reason)`` of the others."""

    vectors: dict[str, np.ndarray]
    failed: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0      # inputs whose vector this call computed
    from_cache: int = 0    # inputs whose vector was in the cache already
    folder: Path | None = None


def _write_npz_atomically(target: Path, **arrays: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _read_store(folder: Path) -> dict[str, np.ndarray]:
    store: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("vectors-*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            for digest, vector in zip(data["sha256"].tolist(), data["features"]):
                store[digest] = vector
    return store


def cached_features(model: PNASNet, paths: Sequence[str], *, cache_dir: str | os.PathLike | None = None,
                    model_name: str | None = None, weights: str | None = None, transform: str = "tf-slim",
                    image_size: int | None = None, batch_size: int = 32, workers: int | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: Progress | None = None) -> CachedFeatures:
    """The feature vector of each of ``paths`` (``model.features`` after ``transform`` at
    ``image_size``), from the cache where it has them, computed and added where not."""
    size = model_image_size(model, image_size)
    identity = {"parameters_sha256": parameters_sha256(model), "config": model.config.name,
                "num_features": model.num_features, "transform": transform, "image_size": size}
    if model.config.use_bounded_activation:  # another function of the same parameters (keys of ReLU models unchanged)
        identity["bounded_activation"] = True
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    folder = folder / key
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "info.json"
    if not info.exists():
        info.write_text(json.dumps(identity | {"model": model_name, "weights": weights}, indent=2))

    result = CachedFeatures({}, folder=folder)
    digests: dict[str, str] = {}
    for path in paths:
        try:
            digests[path] = sha256_file(path)
        except OSError as error:
            result.failed.append((path, f"cannot read the file ({error.strerror or error})"))
    store = _read_store(folder)
    result.from_cache = sum(digest in store for digest in digests.values())
    pending: list[str] = []  # one path per missing content: identical files are computed once
    queued: set[str] = set()
    for path, digest in digests.items():
        if digest not in store and digest not in queued:
            queued.add(digest)
            pending.append(path)
    if pending:
        run_id = hashlib.sha256("\n".join(sorted(digests[p] for p in pending)).encode()).hexdigest()[:16]
        out = output_for(folder / f"pending-{run_id}.npy")
        summary = extract_features(model, pending, out.path, model_name=model_name, weights=weights,
                                   transform=transform, image_size=size, batch_size=batch_size,
                                   workers=workers, max_pixels=max_pixels, progress=progress)
        new_digests, new_vectors = [], []
        as_written = {printable_path(p): p for p in pending}  # the output escapes non-UTF-8 names
        for block in out.iter_blocks():
            good = iter(block.features)
            for path, error in zip(block.paths, block.errors):
                if error is None:
                    new_digests.append(digests[as_written[path]])
                    new_vectors.append(next(good))
        if new_digests:
            _write_npz_atomically(folder / f"vectors-{run_id}.npz", sha256=np.array(new_digests),
                                  features=np.stack(new_vectors).astype(np.float32))
            store.update(zip(new_digests, new_vectors))
        failed_now = dict(summary.failed)
        for file in summary.files:
            Path(file).unlink(missing_ok=True)
    else:
        failed_now = {}
    by_digest_failure = {digests[p]: reason for p, reason in failed_now.items()}
    for path, digest in digests.items():
        if digest in store:
            result.vectors[path] = store[digest]
        else:
            result.failed.append((path, by_digest_failure.get(digest, "no feature vector computed")))
    result.computed = len(result.vectors) - result.from_cache
    order = {p: i for i, p in enumerate(paths)}
    result.failed.sort(key=lambda item: order[item[0]])
    return result
