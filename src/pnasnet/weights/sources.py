"""Where the pretrained weights live: one declarative registry of known sources.

``weights=`` in ``create_model`` takes a source name below ("tf-slim", "tf-hub", "timm", "cadene"), a
``model:source`` pair, or a local path of any form (see ``formats``). A source is fetched once into
the cache (``download.cache_dir()``), verified by checksum on every use, then read like a local path.
Each source lists its URLs (mirrors of the same file) in the order they are tried; the comments below
say why each URL is where it is. Checksums not published
anywhere are trusted on first use and recorded (see ``download``); the Cadene file name carries the
first 8 hex digits of its SHA-256, which is checked too. The timm file is taken from the user's
Hugging Face cache when it is already there (see ``hf_cache``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .download import CorruptFileWarning, cache_dir, check_existing, download
from .hf_cache import HubFile, blob_sha256, find_in_hub_cache


@dataclass(frozen=True)
class WeightsSourceInfo:
    name: str                   # short tag used in weights=
    models: tuple[str, ...]     # create_model names it fits
    urls: tuple[str, ...]       # mirrors of one file, tried in order (a single str is accepted)
    filename: str               # name in the cache
    form: str                   # what the file is (see formats)
    num_classes: int | None     # classes of its final layer (None: no final layer)
    description: str
    sha256: str | None = None   # full digest when published
    sha256_prefix: str | None = None
    hub_file: HubFile | None = None     # the same file in a Hugging Face repository, looked for in its cache

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(self.urls)
        if not urls:
            raise ValueError(f"weights source {self.name!r} has no URL")
        object.__setattr__(self, "urls", urls)

    @property
    def url(self) -> str:
        """The first (preferred) URL."""
        return self.urls[0]

    def with_url_prefix(self, old: str, new: str) -> WeightsSourceInfo:
        """A copy whose URLs starting with ``old`` start with ``new`` instead (e.g. a local mirror or a
        test server in place of ``https://huggingface.co``). Raises ``ValueError`` if none starts with ``old``."""
        if not any(url.startswith(old) for url in self.urls):
            raise ValueError(f"no URL of {self.name!r} starts with {old!r}: {', '.join(self.urls)}")
        return dataclasses.replace(self, urls=tuple(new + url[len(old):] if url.startswith(old) else url
                                                    for url in self.urls))


def _tf_slim_urls(file: str) -> tuple[str, ...]:
    # The https form is the one TF-Slim's README and the PNASNet author's README use;
    # download.tensorflow.org is the same bucket behind another host name.
    return (f"https://storage.googleapis.com/download.tensorflow.org/models/{file}",
            f"https://download.tensorflow.org/models/{file}")


def _tf_hub_urls(tfhub_kind: str, kaggle_variation: str) -> tuple[str, ...]:
    # tfhub.dev has redirected to Kaggle Models since 2023-11; users report 403s at the end of that chain,
    # so Kaggle's own public download API comes next. Its handle for PNASNet is UNVERIFIED: by analogy
    # with NASNet (tfhub nasnet_mobile/classification -> Kaggle nasnet/.../mobile-classification) and with
    # TF1 modules keeping their version numbers there. The answer is a tarball of the same module.
    return (f"https://tfhub.dev/google/imagenet/pnasnet_large/{tfhub_kind}/3?tf-hub-format=compressed",
            f"https://www.kaggle.com/api/v1/models/google/pnasnet/tensorFlow1/{kaggle_variation}/3/download")


# model.safetensors was added to the timm repository in this commit (2023-04-25) and has not changed
# since; pinning it keeps the trust-on-first-use digest meaningful (a branch could move).
TIMM_REPO = "timm/pnasnet5large.tf_in1k"
TIMM_REVISION = "f9a5fe500f179855bb3b97d9550b32b2cc78c0da"
TIMM_HUB_FILE = HubFile(TIMM_REPO, "model.safetensors", TIMM_REVISION)

SOURCES: tuple[WeightsSourceInfo, ...] = (
    WeightsSourceInfo(
        "tf-slim", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        _tf_slim_urls("pnasnet-5_large_2017_12_13.tar.gz"),
        "pnasnet-5_large_2017_12_13.tar.gz", "tarball of a TF-Slim checkpoint", 1001,
        "TF-Slim release (ImageNet top-1 82.9, top-5 96.2 at 331 px with the TF-Slim eval transform)"),
    WeightsSourceInfo(
        "tf-slim", ("pnasnet5_mobile", "pnasnet5_mobile_feature_vector"),
        _tf_slim_urls("pnasnet-5_mobile_2017_12_13.tar.gz"),
        "pnasnet-5_mobile_2017_12_13.tar.gz", "tarball of a TF-Slim checkpoint", 1001,
        "TF-Slim release (ImageNet top-1 74.2, top-5 91.9 at 224 px)"),
    WeightsSourceInfo(
        "tf-hub", ("pnasnet5_large",),
        _tf_hub_urls("classification", "large-classification"),
        "tfhub-pnasnet_large-classification-3.tar.gz", "TF1 hub module tarball", 1001,
        "TF-Hub google/imagenet/pnasnet_large/classification/3 (same checkpoint as tf-slim)"),
    WeightsSourceInfo(
        "tf-hub", ("pnasnet5_large_feature_vector",),
        _tf_hub_urls("feature_vector", "large-feature-vector"),
        "tfhub-pnasnet_large-feature_vector-3.tar.gz", "TF1 hub module tarball", None,
        "TF-Hub google/imagenet/pnasnet_large/feature_vector/3 (no final layer)"),
    WeightsSourceInfo(
        "timm", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        (f"https://huggingface.co/{TIMM_REPO}/resolve/{TIMM_REVISION}/{TIMM_HUB_FILE.filename}",),
        "timm-pnasnet5large.tf_in1k.safetensors", "safetensors, timm names", 1000,
        "timm pnasnet5large.tf_in1k (ported from TF via Cadene; 1000 classes, background row dropped)",
        hub_file=TIMM_HUB_FILE),
    WeightsSourceInfo(
        "cadene", ("pnasnet5_large", "pnasnet5_large_feature_vector"),
        # Older timm's https copy first; Cadene's own host is http only and has had outages.
        ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/pnasnet5large-bf079911.pth",
         "http://data.lip6.fr/cadene/pretrainedmodels/pnasnet5large-bf079911.pth"),
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


def find_in_other_caches(source: WeightsSourceInfo, *, cache: str | os.PathLike | None = None) -> Path | None:
    """The source's file in another tool's cache (today: the Hugging Face hub cache, pinned revision
    only), verified like a cached file, or None. Touches no network; the file is used where it is."""
    if source.hub_file is None:
        return None
    found = find_in_hub_cache(source.hub_file)
    if found is None:
        return None
    # the published digest, else the one the hub's blob is named by (trust on first use only without either)
    problem = check_existing(found, url=source.url, sha256=source.sha256 or blob_sha256(found),
                             sha256_prefix=source.sha256_prefix, cache=cache)
    if problem is not None:
        # Not ours to move aside (another tool owns it): say so and download our own copy instead.
        warnings.warn(CorruptFileWarning(f"{found} (Hugging Face cache) failed verification ({problem}); "
                                         f"not using it"), stacklevel=3)
        return None
    return found


def fetch(source: WeightsSourceInfo, *, cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The verified file of ``source``: from another tool's cache when it is already there, else the
    cached download, fetched first if needed from the first of its URLs that works. Offline, fails fast
    with a message naming the URLs and where to put the file by hand."""
    found = find_in_other_caches(source, cache=cache)
    if found is not None:
        return found
    # A file whose SHA-256 does not start with sha256_prefix counts as a failed mirror inside download().
    return download(source.urls, cached_path(source, cache), sha256=source.sha256,
                    sha256_prefix=source.sha256_prefix, progress=progress, cache=cache)
