"""Recognise a local weights file or folder and present it under TF-Slim names.

Every form is turned into one thing, a mapping ``{TF-Slim name: array in TF layout}`` (read lazily
where the format allows), so that a single loader (``tf_slim_names.load_tf_slim_variables``) checks
and reports names and shapes the same way for all of them:

| form                              | recognised by                                   |
|-----------------------------------|-------------------------------------------------|
| TF checkpoint (TF-Slim release)   | ``X.index`` + ``X.data-*``; prefix, file or folder |
| TF1 hub module (TF-Hub v1 format) | folder with ``tfhub_module.pb`` and ``variables/`` |
| tarball of either                 | ``.tar``, ``.tar.gz``, ``.tgz`` (extracted safely)  |
| PyTorch port (Cadene / timm)      | ``.pth``/``.pt``/``.bin``/``.safetensors`` with keys like ``conv_0.conv.weight`` |
| this package's ``.safetensors``   | metadata ``format = pnasnet``                    |
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..model import LARGE, MOBILE, PNASNetConfig
from .ports import PORT_BOOKKEEPING, tf_name_of_port_key
from .tf_checkpoint import CheckpointError, TFCheckpoint
from .tf_slim_names import layouts, tf_name_of_key

OUR_FORMAT = "pnasnet"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt.pth")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class WeightsFormatError(ValueError):
    """A weights file or folder that cannot be recognised or read; the message says what was found."""


@dataclass
class WeightsSource:
    """A weights file presented as ``{TF-Slim name: array}``; ``num_classes`` read off the final layer
    (None when it has none); ``metadata`` whatever the file records about itself."""

    kind: str
    path: Path
    variables: Any  # Mapping[str, array] or a reader read one tensor at a time (names/read/shape/close)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def _is_reader(self) -> bool:
        return hasattr(self.variables, "read")

    def names(self) -> list[str]:
        return list(self.variables.names()) if self._is_reader else list(self.variables.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        if self._is_reader:
            return tuple(self.variables.shape(name))
        return tuple(np.shape(self.variables[name]))

    def read(self, name: str) -> np.ndarray:
        if self._is_reader:
            return self.variables.read(name)
        return np.asarray(self.variables[name])

    @property
    def num_classes(self) -> int | None:
        names = set(self.names())
        if "final_layer/FC/biases" in names:
            return self.shape("final_layer/FC/biases")[0]
        return None

    def guess_config(self) -> PNASNetConfig | None:
        """Large or Mobile, from conv0's width (96 vs 32 filters); None for other widths."""
        if "conv0/weights" not in set(self.names()):
            return None
        width = self.shape("conv0/weights")[-1]
        return {int(32 * LARGE.stem_multiplier): LARGE, int(32 * MOBILE.stem_multiplier): MOBILE}.get(width)

    def infer_config(self) -> PNASNetConfig:
        """The configuration these weights were made for. This package's files record it; for
        others it is read off the variables: stem width -> stem multiplier, cell_0's width -> F,
        the cells with a strided 'none' branch -> the reduction cells. Training-only settings that
        leave no trace in the weights (drop path, image size) take Large's or Mobile's values when
        the structure is one of theirs, else no drop path and 224 px."""
        if "config" in self.metadata:
            fields = json.loads(self.metadata["config"])
            return PNASNetConfig(**fields)
        names = set(self.names())
        try:
            stem = self.shape("conv0/weights")[-1]
            filters = self.shape("cell_0/1x1/weights")[-1]
        except KeyError as error:
            raise WeightsFormatError(f"{self.path}: not PNASNet-5 weights (no {error})") from None
        cells = {int(m.group(1)) for n in names if (m := re.match(r"cell_(\d+)/", n))}
        num_cells = max(cells) + 1
        reductions = [i for i in range(num_cells) if f"cell_{i}/comb_iter_4/right/1x1/weights" in names]
        base = PNASNetConfig("custom", num_cells=num_cells, num_conv_filters=filters,
                             stem_multiplier=stem / 32, image_size=224, drop_path_keep_prob=1.0,
                             num_reduction_layers=len(reductions))
        if base.reduction_indices() != reductions:
            raise WeightsFormatError(f"{self.path}: reduction cells {reductions} do not follow TF-Slim's "
                                     f"placement for {num_cells} cells ({base.reduction_indices()})")
        for known in (LARGE, MOBILE):
            if (known.num_cells, known.num_conv_filters, known.stem_multiplier, known.num_reduction_layers) == \
                    (num_cells, filters, stem / 32, len(reductions)):
                return known
        return base

    def close(self) -> None:
        if hasattr(self.variables, "close"):
            self.variables.close()

    def __enter__(self) -> "WeightsSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------- detection
def _is_tar(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def _hub_module_dir(path: Path) -> bool:
    return (path / "tfhub_module.pb").is_file() or \
        ((path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file())


def _describe_folder(path: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(entries[:15]) + (f", ... ({len(entries) - 15} more)" if len(entries) > 15 else "")
    return shown or "nothing"


def _single_weights_file(path: Path) -> Path | None:
    candidates = [p for p in path.iterdir() if p.is_file() and
                  (p.suffix == ".safetensors" or p.name.endswith(TORCH_SUFFIXES))]
    return candidates[0] if len(candidates) == 1 else None


def open_weights(path: str | os.PathLike, *, extract_to: Path | None = None) -> WeightsSource:
    """Recognise ``path`` and open it. Tarballs are extracted (safely) under ``extract_to`` or the
    cache first. Raises ``WeightsFormatError`` saying what was found when the form is unknown."""
    path = Path(path).expanduser()
    if path.is_dir():
        if _hub_module_dir(path):
            return _open_tf(path / "variables" / "variables", "tf-hub-module", path)
        if any(path.glob("*.index")) or (path / "checkpoint").is_file():
            return _open_tf(path, "tf-checkpoint", path)
        single = _single_weights_file(path)
        if single is not None:
            return open_weights(single)
        # A tarball extracted into a folder of its own name (pnasnet-5_large_2017_12_13/...).
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if len(subdirs) == 1 and (_hub_module_dir(subdirs[0]) or any(subdirs[0].glob("*.index"))):
            return open_weights(subdirs[0])
        raise WeightsFormatError(
            f"{path}: no weights recognised in this folder (found: {_describe_folder(path)}); expected a "
            "TF checkpoint (*.index + *.data-*), a TF-Hub module (tfhub_module.pb, variables/), "
            "a .safetensors or a .pth file")
    if path.is_file():
        if _is_tar(path):
            from .archive import safe_extract
            from .download import cache_dir

            # Keyed by the tarball's identity (path, size, mtime) rather than a hash of its bytes:
            # no second pass over hundreds of MB on every load; a replaced file gets a new folder.
            stat = path.stat()
            identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            target = (extract_to or cache_dir() / "extracted") / \
                f"{_stem(path)}-{hashlib.sha256(identity).hexdigest()[:12]}"
            if not target.is_dir():
                try:
                    safe_extract(path, target)
                except FileExistsError:
                    pass  # another process finished extracting the same tarball first
            return open_weights(target)
        if path.suffix == ".index" or re.search(r"\.data-\d{5}-of-\d{5}$", path.name):
            return _open_tf(path, "tf-checkpoint", path)
        if path.suffix == ".safetensors":
            return _open_safetensors(path)
        if path.name.endswith(TORCH_SUFFIXES):
            return _open_torch_file(path)
        raise WeightsFormatError(f"{path}: unknown weights file type {path.suffix or '(no suffix)'!r}; "
                                 "expected .index/.data-* (TF checkpoint), .tar.gz, .safetensors or .pth")
    if Path(str(path) + ".index").is_file():  # a checkpoint prefix such as .../model.ckpt
        return _open_tf(path, "tf-checkpoint", path)
    raise FileNotFoundError(f"{path}: no such file, folder or checkpoint prefix")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in TAR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open_tf(path: Path, kind: str, shown: Path) -> WeightsSource:
    try:
        return WeightsSource(kind, shown, TFCheckpoint(path))
    except CheckpointError as error:
        raise WeightsFormatError(str(error)) from error


# ------------------------------------------------------------------------------ PyTorch formats
def state_dict_to_tf_slim(state: Mapping[str, torch.Tensor], *, names: str) -> dict[str, np.ndarray]:
    """Rename a PyTorch state dict (``names`` = "pnasnet" for this package's keys, "port" for
    Cadene/timm keys) to TF-Slim names and layouts, by string rules that hold for any
    configuration. Keys that match no rule keep their name, so the loader reports them."""
    to_tf_name = tf_name_of_port_key if names == "port" else tf_name_of_key
    out: dict[str, np.ndarray] = {}
    for key, tensor in state.items():
        if PORT_BOOKKEEPING.search(key):
            continue
        array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        name = to_tf_name(key)
        if name is None:
            out[key] = array
        else:
            out[name] = layouts(name, array.ndim)[1](array)
    return out


def _naming_of(keys: list[str], path: Path) -> str:
    if "conv_0.conv.weight" in keys:
        return "port"
    if "conv0.weight" in keys:
        return "pnasnet"
    raise WeightsFormatError(
        f"{path}: a PyTorch state dict, but not of PNASNet-5 (no 'conv_0.conv.weight' as in the "
        f"Cadene/timm ports nor 'conv0.weight' as in pnasnet's own files); first keys: {keys[:5]}")


def _open_torch_file(path: Path) -> WeightsSource:
    try:
        # weights_only: never run code from a pickle (a hostile .pth stops here).
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # torch raises several types for bad or hostile pickles
        raise WeightsFormatError(
            f"{path}: not a loadable PyTorch weights file ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}); only plain tensors are accepted "
            "(torch.load with weights_only=True)") from error
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFormatError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    obj = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    naming = _naming_of(list(obj), path)
    return WeightsSource("torch-" + naming, path, state_dict_to_tf_slim(obj, names=naming))


class _TFSlimNamedReader:
    """A reader of PyTorch-named tensors (this package's or a port's keys) seen with TF-Slim names
    and layouts, tensor by tensor (the same rules as :func:`state_dict_to_tf_slim`)."""

    def __init__(self, reader, naming: str):
        self.reader = reader
        to_tf_name = tf_name_of_port_key if naming == "port" else tf_name_of_key
        self._keys: dict[str, str] = {}
        for key in reader.names():
            if not PORT_BOOKKEEPING.search(key):
                self._keys[to_tf_name(key) or key] = key

    def names(self) -> list[str]:
        return list(self._keys)

    def _to_tf(self, name: str, array: np.ndarray) -> np.ndarray:
        return layouts(name, array.ndim)[1](array) if name != self._keys[name] else array

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.reader.shape(self._keys[name])
        return tuple(self._to_tf(name, np.broadcast_to(np.uint8(0), shape)).shape)

    def read(self, name: str) -> np.ndarray:
        return self._to_tf(name, self.reader.read(self._keys[name]))

    def close(self) -> None:
        self.reader.close()


def _open_safetensors(path: Path) -> WeightsSource:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from .safetensors_reader import SafetensorsReader

    try:
        with safe_open(str(path), framework="pt") as handle:  # validates the header and the offsets
            metadata = dict(handle.metadata() or {})
        reader = SafetensorsReader(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFormatError(f"{path}: not a readable .safetensors file ({error})") from error
    try:
        naming = "pnasnet" if metadata.get("format") == OUR_FORMAT else _naming_of(reader.names(), path)
    except BaseException:
        reader.close()
        raise
    kind = "pnasnet-safetensors" if naming == "pnasnet" else "safetensors-port"
    return WeightsSource(kind, path, _TFSlimNamedReader(reader, naming), metadata=metadata)
