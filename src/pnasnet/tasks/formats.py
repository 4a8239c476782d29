"""The finished features outputs: Parquet, or ``.npy`` with an index. Each can be read back (to
resume or extend a run) and written from a stream of :class:`~pnasnet.tasks.rows.RowBlock`.

Parquet (``OUT.parquet``, needs ``pyarrow``): one row per input with columns ``path`` (string),
``features`` (``fixed_size_list<float32>[D]``, null for a failed input) and ``error`` (string, null
when the image was read); the run's :class:`~pnasnet.tasks.run_info.RunInfo` is JSON in the schema
metadata under the key ``pnasnet``.

Paths are written as given, except that bytes of a file name that are not UTF-8 appear as
``\\xNN`` escapes (such a file is computed again by a later run, as its row no longer matches it).

NumPy (``OUT.npy``, numpy only): ``OUT.npy`` holds the vectors of the images that were read,
float32 ``[n_ok, D]``; ``OUT.index.csv`` lists every input (columns ``path``, ``row``: its row in
``OUT.npy``, empty for a failed input, ``error``); ``OUT.meta.json`` is the ``RunInfo``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .inputs import printable_path
from .rows import RowBlock
from .run_info import RunInfo

__all__ = ["FeaturesOutput", "NpyOutput", "ParquetOutput", "output_for"]

_META_KEY = b"pnasnet"
_READ_ROWS = 4096  # rows per block when reading a finished output back


class FeaturesOutput:
    """A finished output in one format: ``files`` are its paths by name, ``work_dir`` its
    :class:`~pnasnet.tasks.chunks.ChunkFolder`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.work_dir = self.path.with_name(self.path.name + ".partial")

    @property
    def files(self) -> dict[str, Path]:
        raise NotImplementedError

    def exists(self) -> bool:
        return any(p.exists() for p in self.files.values())

    def read_info(self) -> RunInfo:
        raise NotImplementedError

    def iter_blocks(self, *, with_features: bool = True) -> Iterator[RowBlock]:
        raise NotImplementedError

    def write(self, folder: Path, info: RunInfo, blocks: Iterable[RowBlock], num_ok: int) -> None:
        """Write the files (named as in :attr:`files`) into ``folder``; ``num_ok`` is the number of
        good rows ``blocks`` will hold."""
        raise NotImplementedError

    def _unreadable(self, error: Exception) -> ValueError:
        return ValueError(f"{self.path} exists but is not a readable pnasnet features output ({error}); "
                          "choose another output or pass --overwrite to replace it")


class ParquetOutput(FeaturesOutput):
    @property
    def files(self) -> dict[str, Path]:
        return {self.path.name: self.path}

    def read_info(self) -> RunInfo:
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(self.path).metadata or {}
            return RunInfo.from_json(meta[_META_KEY])
        except Exception as error:  # noqa: BLE001 - whatever is wrong, the message is the same
            raise self._unreadable(error) from error

    def iter_blocks(self, *, with_features: bool = True) -> Iterator[RowBlock]:
        import pyarrow.parquet as pq

        columns = ["path", "error"] + (["features"] if with_features else [])
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=_READ_ROWS, columns=columns):
            errors = batch.column("error").to_pylist()
            num_ok = sum(e is None for e in errors)
            if with_features:
                # flatten() drops the null (failed) rows' slots: exactly the good rows' values
                flat = batch.column("features").flatten().to_numpy(zero_copy_only=False)
                features = flat.astype(np.float32, copy=False).reshape(num_ok, -1)
            else:
                features = np.empty((num_ok, 0), np.float32)
            yield RowBlock(batch.column("path").to_pylist(), errors, features)

    def write(self, folder: Path, info: RunInfo, blocks: Iterable[RowBlock], num_ok: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = info.num_features
        schema = pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32(), dim)),
                            ("error", pa.string())], metadata={_META_KEY: info.to_json().encode()})
        with pq.ParquetWriter(folder / self.path.name, schema) as writer:
            for block in blocks:
                if not len(block):
                    continue
                failed = np.array([e is not None for e in block.errors])
                values = np.zeros((len(block), dim), np.float32)  # failed rows: null, slots unused
                values[~failed] = block.features
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim,
                                                            mask=pa.array(failed))
                paths = [printable_path(p) for p in block.paths]
                table = pa.Table.from_arrays([pa.array(paths, pa.string()), vectors,
                                              pa.array(block.errors, pa.string())], schema=schema)
                writer.write_table(table)  # one row group per block


class NpyOutput(FeaturesOutput):
    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name[: -len(".npy")] + suffix)

    @property
    def files(self) -> dict[str, Path]:
        # the .npy last: it is moved into place last, so its presence means a complete set
        return {p.name: p for p in (self._sibling(".index.csv"), self._sibling(".meta.json"), self.path)}

    def read_info(self) -> RunInfo:
        try:
            return RunInfo.from_json(self._sibling(".meta.json").read_text())
        except Exception as error:  # noqa: BLE001
            raise self._unreadable(error) from error

    def iter_blocks(self, *, with_features: bool = True) -> Iterator[RowBlock]:
        vectors = np.load(self.path, mmap_mode="r") if with_features else None
        next_vector = 0

        def block(paths: list[str], errors: list[str | None]) -> RowBlock:
            nonlocal next_vector
            num_ok = sum(e is None for e in errors)
            if vectors is None:
                return RowBlock(paths, errors, np.empty((num_ok, 0), np.float32))
            features = np.array(vectors[next_vector: next_vector + num_ok], np.float32)
            next_vector += num_ok
            return RowBlock(paths, errors, features)

        with open(self._sibling(".index.csv"), newline="", encoding="utf-8") as fh:
            paths: list[str] = []
            errors: list[str | None] = []
            for row in csv.DictReader(fh):
                paths.append(row["path"])
                errors.append(None if row["row"] != "" else (row["error"] or "unknown error"))
                if len(paths) == _READ_ROWS:
                    yield block(paths, errors)
                    paths, errors = [], []
            if paths:
                yield block(paths, errors)

    def write(self, folder: Path, info: RunInfo, blocks: Iterable[RowBlock], num_ok: int) -> None:
        target = np.lib.format.open_memmap(folder / self.path.name, mode="w+", dtype=np.float32,
                                           shape=(num_ok, info.num_features))
        row = 0
        with open(folder / self._sibling(".index.csv").name, "w", newline="", encoding="utf-8") as fh:
            index = csv.writer(fh)
            index.writerow(["path", "row", "error"])
            for block in blocks:
                target[row: row + block.num_ok] = block.features
                for path, error in zip(block.paths, block.errors):
                    index.writerow([printable_path(path), "" if error else row, error or ""])
                    row += error is None
        if row != num_ok:
            raise RuntimeError(f"internal error: {row} vectors written, {num_ok} announced")
        target.flush()
        del target
        (folder / self._sibling(".meta.json").name).write_text(json.dumps(json.loads(info.to_json()), indent=2))


def output_for(path: str | os.PathLike) -> FeaturesOutput:
    """The output format chosen by the file name: ``.parquet`` or ``.npy``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return ParquetOutput(path)
    if suffix == ".npy":
        return NpyOutput(path)
    raise ValueError(f"the features output must end in .parquet or .npy, got {os.fspath(path)!r}")
