"""A features output that is a folder of Parquet files (what ``--engine ray`` writes), local or at a
URI (``s3://bucket/feats/``).

Every file has the schema of the single-file output (:class:`pnasnet.tasks.formats.ParquetOutput`):
``path`` (string), ``features`` (``fixed_size_list<float32>[D]``, null for a failed input),
``error`` (string, null when the image was read), and the run's
:class:`~pnasnet.tasks.run_info.RunInfo` as JSON under the ``pnasnet`` schema-metadata key. So
``pyarrow.parquet.read_table(DEST)``, ``pandas.read_parquet(DEST)``, Spark, DuckDB or
``ray.data.read_parquet(DEST)`` read the folder as one table, and :func:`open_features` reads it
like the single-file outputs (``read_info()``, ``iter_blocks()``).

Layout::

    DEST/part-<sha1 of its paths>.parquet   rows; named by content, so a retried task rewrites its file
    DEST/_pnasnet.json                      the RunInfo, written before the first part (compared on resume)
    DEST/_lock                              flock held by the running job (local folders only)
    DEST/.part-*.tmp-*                      a part being written; renamed into place when complete

Names starting with ``_`` or ``.`` are skipped by Parquet readers. On a local folder a part is
written to a temporary name and renamed, so it is complete or absent; on an object store a part
appears only when its upload completes. Each input has exactly one row once a job has finished;
a job killed half way may leave a path in two parts (a retried batch), and every reader here keeps
one row per path by the same rule: a row with a vector over an error row, then the part whose name
sorts first.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..atomic_files import atomic_path, write_bytes_atomically
from ..file_locks import lock_exclusively
from ..tasks.formats import FeaturesOutput, output_for
from ..tasks.inputs import printable_path
from ..tasks.rows import RowBlock
from ..tasks.run_info import RunInfo
from .sources import filesystem_for, is_uri

__all__ = ["ParquetFolderOutput", "open_features", "part_table"]

META_KEY = b"pnasnet"
MANIFEST = "_pnasnet.json"
LOCK = "_lock"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


def part_schema(info: RunInfo):
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32(), info.num_features)),
                      ("error", pa.string())], metadata={META_KEY: info.to_json().encode()})


def part_table(info: RunInfo, paths: Sequence[str], errors: Sequence[str | None], features: np.ndarray):
    """A table in the output schema. ``features``: float32 ``[len(paths), D]``; rows with an error
    are written as null (their values are ignored)."""
    import pyarrow as pa

    dim = info.num_features
    failed = np.array([e is not None for e in errors], dtype=bool)
    values = np.ascontiguousarray(features, dtype=np.float32).reshape(len(paths), dim).copy()
    values[failed] = 0.0
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=pa.array(failed))
    return pa.Table.from_arrays([pa.array([printable_path(p) for p in paths], pa.string()), vectors,
                                 pa.array(list(errors), pa.string())], schema=part_schema(info))


def part_name(paths: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(paths)).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{PART_PREFIX}{digest[:24]}{PART_SUFFIX}"


@dataclass
class _Row:
    part: str
    index: int
    error: str | None


class ParquetFolderOutput(FeaturesOutput):
    """A folder of Parquet parts (see the module docstring); ``path`` is a local folder or a URI."""

    def __init__(self, path: str | os.PathLike):
        self.location = os.fspath(path).rstrip("/") or "/"
        self.remote = is_uri(self.location)
        if self.remote:
            self.fs, self.inner = filesystem_for(self.location)
        else:
            from pyarrow import fs as pafs

            self.fs, self.inner = pafs.LocalFileSystem(), os.path.abspath(self.location)
        self.path = Path(self.inner) if not self.remote else Path(self.location)  # for messages
        #: where every process (a Ray worker has another current directory) finds the folder
        self.absolute = self.location if self.remote else self.inner
        self._lock_fd: int | None = None

    # --------------------------------------------------------------------- naming
    def _full(self, name: str) -> str:
        return f"{self.inner}/{name}"

    def part_names(self) -> list[str]:
        """The complete parts, by name (sorted)."""
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(self.inner)
        if info.type != pafs.FileType.Directory:
            return []
        names = [e.base_name for e in self.fs.get_file_info(pafs.FileSelector(self.inner))
                 if e.type == pafs.FileType.File]
        return sorted(n for n in names if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX))

    @property
    def files(self) -> dict[str, Path]:
        return {name: Path(self._full(name)) for name in self.part_names()}

    def exists(self) -> bool:
        return bool(self.part_names()) or self._exists(MANIFEST)

    def _exists(self, name: str) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self._full(name)).type == pafs.FileType.File

    # --------------------------------------------------------------------- reading
    def read_info(self) -> RunInfo:
        import pyarrow.parquet as pq

        try:
            if self._exists(MANIFEST):
                with self.fs.open_input_stream(self._full(MANIFEST)) as fh:
                    return RunInfo.from_json(fh.read())
            parts = self.part_names()
            if not parts:
                raise FileNotFoundError("no parts and no manifest")
            return RunInfo.from_json(pq.read_schema(self._full(parts[0]), filesystem=self.fs).metadata[META_KEY])
        except Exception as error:  # noqa: BLE001
            raise self._unreadable(error) from error

    def _read_part(self, name: str, columns: list[str]):
        import pyarrow.parquet as pq

        return pq.read_table(self._full(name), columns=columns, filesystem=self.fs)

    def latest_rows(self) -> dict[str, _Row]:
        """The row kept for each path (see the module docstring for the rule)."""
        kept: dict[str, _Row] = {}
        for name in self.part_names():
            table = self._read_part(name, ["path", "error"])
            for index, (path, error) in enumerate(zip(table.column("path").to_pylist(),
                                                      table.column("error").to_pylist())):
                old = kept.get(path)
                if old is None or (old.error is not None and error is None):
                    kept[path] = _Row(name, index, error)
        return kept

    def iter_blocks(self, *, with_features: bool = True) -> Iterator[RowBlock]:
        dim = self.read_info().num_features if with_features else 0
        kept = self.latest_rows()
        by_part: dict[str, set[int]] = {}
        for row in kept.values():
            by_part.setdefault(row.part, set()).add(row.index)
        for name in self.part_names():
            wanted = by_part.get(name)
            if not wanted:
                continue
            table = self._read_part(name, ["path", "error"] + (["features"] if with_features else []))
            keep = [i in wanted for i in range(table.num_rows)]
            paths = table.column("path").to_pylist()
            errors = table.column("error").to_pylist()
            num_ok = sum(e is None for e in errors)
            if with_features:
                flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                features = flat.astype(np.float32, copy=False).reshape(num_ok, dim)
            else:
                features = np.empty((num_ok, 0), np.float32)
            yield RowBlock(paths, errors, features).select(keep)

    # --------------------------------------------------------------------- writing
    def open_for_run(self, info: RunInfo, *, overwrite: bool = False) -> None:
        """Create the folder, lock it (local folders), check or record the run metadata, delete
        parts left half-written by a killed job. Raises
        :class:`~pnasnet.tasks.run_info.OutputMismatchError` if the parts were made by another run."""
        from ..tasks.chunks import OutputBusyError

        self.fs.create_dir(self.inner, recursive=True)
        if not self.remote:
            self._lock_fd = lock_exclusively(self._full(LOCK), lambda: OutputBusyError(
                f"another job is writing {self.location} (it holds {self._full(LOCK)})"))
        try:
            if overwrite:
                for name in self.part_names():
                    self.fs.delete_file(self._full(name))
            elif self.exists():
                info.check_same_as(self.read_info(), self.location)
            if not self.remote:
                for leftover in Path(self.inner).glob(".part-*.tmp-*"):
                    leftover.unlink(missing_ok=True)
            self.write_bytes(MANIFEST, info.to_json().encode())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.remote:
            with self.fs.open_output_stream(self._full(name)) as fh:  # object stores: atomic on close
                fh.write(data)
            return
        write_bytes_atomically(self._full(name), data, hidden=True)  # readers skip dotfiles

    def write_part(self, table, name: str | None = None) -> str:
        """Write ``table`` as one complete part (atomically); returns its name. The default name
        comes from its paths, so writing the same rows again replaces the file instead of adding one."""
        import pyarrow.parquet as pq

        name = name or part_name(table.column("path").to_pylist())
        if self.remote:
            pq.write_table(table, self._full(name), filesystem=self.fs)
            return name
        with atomic_path(self._full(name), hidden=True) as tmp:
            pq.write_table(table, tmp)
        return name

    def drop_rows(self, drop: dict[str, set[int]]) -> None:
        """Rewrite each part ``name`` without the rows ``drop[name]`` (deleting a part left empty).
        Each part is replaced atomically, so a kill in between leaves a readable folder."""
        import pyarrow.parquet as pq

        for name, rows in sorted(drop.items()):
            if not rows:
                continue
            table = pq.read_table(self._full(name), filesystem=self.fs)
            keep = np.ones(table.num_rows, dtype=bool)
            keep[sorted(rows)] = False
            if keep.any():
                self.write_part(table.filter(keep), name)
            else:
                self.fs.delete_file(self._full(name))

    def retire_failures(self, paths: Iterable[str]) -> None:
        """Remove the error rows of ``paths`` (inputs about to be tried again)."""
        retry = set(paths)
        drop: dict[str, set[int]] = {}
        for name in self.part_names():
            table = self._read_part(name, ["path", "error"])
            for index, (path, error) in enumerate(zip(table.column("path").to_pylist(),
                                                      table.column("error").to_pylist())):
                if error is not None and path in retry:
                    drop.setdefault(name, set()).add(index)
        self.drop_rows(drop)

    def deduplicate(self) -> None:
        """Leave exactly one row per path (the one :meth:`latest_rows` keeps)."""
        kept = self.latest_rows()
        drop: dict[str, set[int]] = {}
        for name in self.part_names():
            table = self._read_part(name, ["path"])
            for index, path in enumerate(table.column("path").to_pylist()):
                row = kept[path]
                if (row.part, row.index) != (name, index):
                    drop.setdefault(name, set()).add(index)
        self.drop_rows(drop)

    def write(self, folder: Path, info: RunInfo, blocks: Iterable[RowBlock], num_ok: int) -> None:
        raise NotImplementedError("a Parquet folder is written part by part (pnasnet.engines.ray_data)")


def open_features(path: str | os.PathLike) -> FeaturesOutput:
    """Any features output, to read back: ``OUT.parquet``, ``OUT.npy`` (single-machine command) or a
    folder / URI of Parquet parts (``--engine ray``). ``.read_info()`` gives the run metadata,
    ``.iter_blocks()`` the rows (:class:`~pnasnet.tasks.rows.RowBlock`, one row per path)."""
    location = os.fspath(path)
    if is_uri(location) or os.path.isdir(location):
        return ParquetFolderOutput(location)
    return output_for(location)
