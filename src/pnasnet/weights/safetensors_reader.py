"""Read a ``.safetensors`` file one tensor at a time with ordinary file reads.

The ``safetensors`` library validates the file and gives its metadata; the tensors are then read
here, each with one ``readinto`` at its recorded offset. The library's own loaders memory-map the
file, and every page they touch stays in the process's resident memory until the file is closed:
loading PNASNet-5 Large that way costs the file's 329 MB on top of the model's 344 MB at the
moment of peak memory. Read one at a time, only one tensor is held beside the model.
(Format: 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}``
with offsets relative to the end of the header, then the data, little-endian.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

__all__ = ["SafetensorsReader"]

_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                 "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16,
                 "U32": np.uint32, "U64": np.uint64}


class SafetensorsReader:
    """``names()``, ``shape(name)``, ``read(name) -> np.ndarray`` (bfloat16 read as float32),
    ``metadata``; ``close()``. Call after the file has been validated (``safetensors.safe_open``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            (length,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(length))
        except BaseException:
            self._file.close()
            raise
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._data_start = 8 + length
        self._entries: dict[str, dict] = header

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        self._file.seek(self._data_start + begin)
        if self._file.readinto(buffer) != len(buffer):
            raise ValueError(f"{self.path}: tensor {name} runs past the end of the file")
        dtype = entry["dtype"]
        if dtype == "BF16":  # numpy has no bfloat16: widen exactly through torch
            raw = torch.frombuffer(buffer, dtype=torch.bfloat16) if buffer else torch.empty(0, dtype=torch.bfloat16)
            return raw.float().numpy().reshape(entry["shape"])
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has dtype {dtype}, which PNASNet weights never use")
        return np.frombuffer(buffer, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<")).reshape(entry["shape"])

    def close(self) -> None:
        self._file.close()
