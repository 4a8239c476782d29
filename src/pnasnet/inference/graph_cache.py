"""The OpenVINO form of a model, exported once and kept on disk: what ``backend="auto"`` runs.

Exporting PNASNet-5 Large to ONNX and converting it takes about 10 s; compiling the saved form in
OpenVINO about 2 s. So the converted graph (OpenVINO IR, float32 weights: ``compress_to_fp16`` is
off, the default of ``save_model`` would round them) is kept under ``<cache>/openvino/<key>/``, where
``key`` is a SHA-256 of everything the graph depends on: the parameters' bytes
(:func:`~pnasnet.model.fingerprint.parameters_sha256`), the architecture, the image size, and the
versions of pnasnet, PyTorch (its exporter), OpenVINO and this file's export revision. Other weights, sizes or versions get
their own entry; the :data:`KEEP` most recently used entries are kept (about 350 MB each for Large).

Entries appear whole or not at all (written to a hidden sibling, then one rename), and a file lock
makes concurrent processes (Ray actors, server workers) export once and share the result.
``PNASNET_GRAPH_CACHE=off`` exports to a temporary folder instead, every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..atomic_files import fsync_dir, fsync_file
from ..env_flags import env_flag
from ..model.fingerprint import parameters_sha256
from ..model.network import PNASNet
from ..version import __version__
from ..weights.cache import default_cache_dir

# Bump when the exported graph changes for the same weights (the export code, its opset, padding).
EXPORT_REVISION = 1
KEEP = 3
ENV_SWITCH = "PNASNET_GRAPH_CACHE"
MODEL_FILE = "model.xml"


def graph_cache_dir() -> Path:
    """``<pnasnet cache>/openvino`` (see :func:`pnasnet.weights.cache.default_cache_dir`)."""
    return default_cache_dir() / "openvino"


def caching_enabled() -> bool:
    return env_flag(ENV_SWITCH, True)


def graph_key(model: PNASNet, image_size: int) -> str:
    """The cache key of ``model``'s OpenVINO form at ``image_size`` (see the module docstring)."""
    import openvino
    import torch

    identity = {"revision": EXPORT_REVISION, "pnasnet": __version__, "openvino": openvino.__version__,
                "torch": torch.__version__,  # its exporter writes the graph
                # the config holds the architecture, use_bounded_activation included
                "config": repr(model.config), "num_classes": model.num_classes, "image_size": int(image_size),
                "parameters_sha256": parameters_sha256(model)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def openvino_model(model: PNASNet, image_size: int, *, dynamic_size: bool = False):
    """``model`` as an ``openvino.Model`` (our ONNX export, read by OpenVINO; the ONNX file is a
    temporary one)."""
    import openvino as ov

    from .onnx_export import export_onnx

    fd, name = tempfile.mkstemp(prefix="pnasnet-", suffix=".onnx")
    os.close(fd)
    try:
        export_onnx(model, name, image_size=image_size, dynamic_size=dynamic_size)
        return ov.Core().read_model(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _convert(model: PNASNet, image_size: int, folder: Path) -> Path:
    """``model``'s OpenVINO IR in ``folder``; the IR's path."""
    import openvino as ov

    xml = folder / MODEL_FILE
    ov.save_model(openvino_model(model, image_size), str(xml), compress_to_fp16=False)
    return xml


def openvino_graph(model: PNASNet, image_size: int, *, talk: bool = True) -> tuple[Path, Path | None]:
    """``(IR path, temporary folder or None)``: the cached OpenVINO form of ``model`` at
    ``image_size``, exported now if it is not cached. With caching off, the IR lies in a temporary
    folder that the caller removes once the model is compiled."""
    if not caching_enabled():
        folder = Path(tempfile.mkdtemp(prefix="pnasnet-openvino-"))
        try:
            return _convert(model, image_size, folder), folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    from filelock import FileLock

    root = graph_cache_dir()
    key = graph_key(model, image_size)
    entry = root / key
    if (entry / MODEL_FILE).is_file():
        _touch(entry)
        return entry / MODEL_FILE, None
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{key}.lock")):
        if not (entry / MODEL_FILE).is_file():  # another process may have made it while we waited
            if talk:
                print(f"pnasnet: converting {model.config.name} at {image_size} px for OpenVINO once "
                      f"(cached in {entry})", file=sys.stderr, flush=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            try:
                _convert(model, image_size, staging)
                for file in staging.iterdir():
                    fsync_file(file)
                os.rename(staging, entry)
                fsync_dir(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    _prune(root, keep=entry)
    return entry / MODEL_FILE, None


def _touch(entry: Path) -> None:
    try:
        os.utime(entry)
    except OSError:  # a read-only cache still serves
        pass


def _prune(root: Path, keep: Path) -> None:
    """Remove all but the :data:`KEEP` most recently used entries (never ``keep``)."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
