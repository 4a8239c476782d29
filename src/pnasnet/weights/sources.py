"""Where the pretrained weights live: one declarative registry of known sources.

``weights=`` in ``create_model`` takes a source name below ("tf-slim", "tf-hub", "timm", "cadene"), a
``model:source`` pair, or a local path of any form (see ``formats``). A source is fetched once into
the cache (``download.cache_dir()``), verified by checksum on every use, then read like a local path.
Checksums not published anywhere are trusted on first use and recorded (see ``download``); the
Cadene file name carries the first 8 hex digits of its SHA-256, which is checked too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .download import ChecksumError, cache_dir, download, sha256_file


@dataclass(frozen=True)
class WeightsSourceInfo:
    name: str                   # short tag used in weights=
    models: tuple[str, ...]     # create_model names it fits
    url: str
    filename: str               # name in the cache
    form: str                   # what the file is (see formats)
    num_classes: int | None     # classes of its final layer (None: no final layer)
    description: str
    sha256: str | None = None   # full digest when published
    sha256_prefix: str | None = None


SOURCES: tuple[WeightsSourceInfo, ...] = (
    WeightsSourceInfo(
        "tf-slim", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        "http://download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz",
        "pnasnet-5_large_2017_12_13.tar.gz", "tarball of a TF-Slim checkpoint", 1001,
        "TF-Slim release (ImageNet top-1 82.9, top-5 96.2 at 331 px with the TF-Slim eval transform)"),
    WeightsSourceInfo(
        "tf-slim", ("pnasnet5_mobile", "pnasnet5_mobile_feature_vector"),
        "http://download.tensorflow.org/models/pnasnet-5_mobile_2017_12_13.tar.gz",
        "pnasnet-5_mobile_2017_12_13.tar.gz", "tarball of a TF-Slim checkpoint", 1001,
        "TF-Slim release (ImageNet top-1 74.2, top-5 91.9 at 224 px)"),
    WeightsSourceInfo(
        "tf-hub", ("pnasnet5_large",),
        "https://tfhub.dev/google/imagenet/pnasnet_large/classification/3?tf-hub-format=compressed",
        "tfhub-pnasnet_large-classification-3.tar.gz", "TF1 hub module tarball", 1001,
        "TF-Hub google/imagenet/pnasnet_large/classification/3 (same checkpoint as tf-slim)"),
    WeightsSourceInfo(
        "tf-hub", ("pnasnet5_large_feature_vector",),
        "https://tfhub.dev/google/imagenet/pnasnet_large/feature_vector/3?tf-hub-format=compressed",
        "tfhub-pnasnet_large-feature_vector-3.tar.gz", "TF1 hub module tarball", None,
        "TF-Hub google/imagenet/pnasnet_large/feature_vector/3 (no final layer)"),
    WeightsSourceInfo(
        "timm", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        "https://huggingface.co/timm/pnasnet5large.tf_in1k/resolve/main/model.safetensors",
        "timm-pnasnet5large.tf_in1k.safetensors", "safetensors, timm names", 1000,
        "timm pnasnet5large.tf_in1k (ported from TF via Cadene; 1000 classes, background row dropped)"),
    WeightsSourceInfo(
        "cadene", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        "http://data.lip6.fr/cadene/pretrainedmodels/pnasnet5large-bf079911.pth",
        "pnasnet5large-bf079911.pth", "PyTorch state dict, Cadene names", 1001,
        "Cadene pretrained-models.pytorch pnasnet5large (1001 classes)", sha256_prefix="bf079911"),
)


class UnknownWeightsError(ValueError):
    pass


def sources_for(model: str) -> list[WeightsSourceInfo]:
    return [s for s in SOURCES if model in s.models]


def find_source(model: str, name: str) -> WeightsSourceInfo:
    """The registry entry for ``name`` (or ``other_model:name``) used with ``model``."""
    if ":" in name:
        model, name = name.split(":", 1)
    for source in SOURCES:
        if source.name == name and model in source.models:
            return source
    known = sorted({s.name for s in sources_for(model)})
    raise UnknownWeightsError(
        f"no weights named {name!r} for {model}: known sources are {', '.join(known) or 'none'}, "
        "or pass a local path (TF checkpoint or folder, .tar.gz, hub module, .safetensors, .pth)")


def cached_path(source: WeightsSourceInfo, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / source.filename


def fetch(source: WeightsSourceInfo, *, cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The verified cached file of ``source``, downloading it first if needed. Offline, fails fast
    with a message naming the URL and where to put the file by hand."""
    # Offline, download() fails fast naming the URL, this cache path, and the local-path option.
    path = download(source.url, cached_path(source, cache), sha256=source.sha256, progress=progress,
                    cache=cache)
    if source.sha256_prefix:
        digest = sha256_file(path)
        if not digest.startswith(source.sha256_prefix):
            raise ChecksumError(f"{path}: SHA-256 {digest} does not start with {source.sha256_prefix}, "
                                f"the prefix its name promises; the file is not the one published at {source.url}")
    return path
