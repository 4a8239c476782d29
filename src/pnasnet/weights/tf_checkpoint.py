"""Read TensorFlow V2 checkpoints ("tensor bundles") with numpy only.

A V2 checkpoint with prefix ``PREFIX`` is

* ``PREFIX.index``: a LevelDB-style sorted table. The key ``""`` holds a ``BundleHeaderProto``
  (number of data shards, byte order, format version); every other key is a tensor name whose
  value is a ``BundleEntryProto`` (dtype, shape, shard, byte offset and size, CRC32C).
* ``PREFIX.data-SSSSS-of-NNNNN``: the tensors' bytes, back to back.

Everything is checked: the table's block checksums, every offset and size against the file's
real size, and (unless ``verify=False``) each tensor's CRC32C. Any problem with the files raises
:class:`CheckpointError` naming the file and what is wrong. An unknown tensor name raises
:class:`KeyError`.

Supported dtypes and what :meth:`TFCheckpoint.read` returns:

=========================================================  =====================================
TF dtype                                                   numpy result
=========================================================  =====================================
float16 (half), float32, float64, complex64, complex128    same dtype
int8, int16, int32, int64, uint8, uint16, uint32, uint64   same dtype
bool                                                       ``bool``
bfloat16                                                   ``float32``, exactly (bits << 16)
string                                                     ``object`` array of ``bytes``
=========================================================  =====================================

Not supported, with a clear error when read: quantized types, float8, resource and variant
tensors, partitioned ("sliced") variables. Big-endian checkpoints are refused when opened. The
arrays returned are in the machine's byte order, C-contiguous, writable, and shared with nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import math
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

__all__ = ["CheckpointError", "TFCheckpoint", "read_tf_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or uses a feature we do not read."""


class _MalformedError(Exception):
    """Raised by the byte-level decoders; callers turn it into a CheckpointError with context."""


# --------------------------------------------------------------------------------------------
# CRC32C as TensorFlow (and LevelDB) store it
# --------------------------------------------------------------------------------------------

_CRC_MASK_DELTA = 0xA282EAD8


def _mask_crc(crc: int) -> int:
    """TF stores CRCs "masked" (rotated and offset) so that a CRC of data holding CRCs is sane."""
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _crc32c(data: bytes | np.ndarray, crc: int = 0) -> int:
    """CRC32C of ``data`` (bytes or a C-contiguous numpy array, checksummed in place)."""
    return int(google_crc32c.extend(crc, data))


# --------------------------------------------------------------------------------------------
# Protocol-buffer wire format (just what the bundle protos need)
# --------------------------------------------------------------------------------------------

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5
_Fields = dict[int, list[int | bytes]]  # a decoded message: field number -> values in order


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``buf[pos:end]``; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise _MalformedError("a varint runs past the end of its data")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _MalformedError("a varint is longer than 10 bytes")


def _decode_proto(buf: bytes) -> _Fields:
    """Split a serialized message into {field number: [values]} (varints and fixed as ints)."""
    fields: _Fields = {}
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire_type in (_WIRE_FIXED64, _WIRE_FIXED32):
            width = 8 if wire_type == _WIRE_FIXED64 else 4
            if pos + width > end:
                raise _MalformedError(f"field {number} runs past the end of the message")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire_type == _WIRE_BYTES:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise _MalformedError(f"field {number} runs past the end of the message")
            value = bytes(buf[pos:pos + length])
            pos += length
        else:
            raise _MalformedError(f"field {number} has unsupported wire type {wire_type}")
        if number == 0:
            raise _MalformedError("field number 0")
        fields.setdefault(number, []).append(value)
    return fields


def _int_field(fields: _Fields, number: int, *, bits: int = 64) -> int:
    """The last value of a signed integer field (proto3 semantics: absent means 0)."""
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]
    if not isinstance(value, int):
        raise _MalformedError(f"field {number} should be an integer")
    value &= (1 << bits) - 1  # negative int32s are sign-extended to 10-byte varints
    return value - (1 << bits) if value >> (bits - 1) else value


def _fixed32_field(fields: _Fields, number: int) -> int:
    """The last value of an unsigned fixed32 field (absent means 0)."""
    values = fields.get(number)
    if not values:
        return 0
    if not isinstance(values[-1], int):
        raise _MalformedError(f"field {number} should be a fixed32")
    return values[-1]


def _repeated_int_field(fields: _Fields, number: int) -> list[int]:
    """A repeated integer field, packed (proto3's default: one run of varints) or not."""
    values: list[int] = []
    for value in fields.get(number, []):
        if isinstance(value, int):
            values.append(value)
            continue
        pos = 0
        while pos < len(value):
            item, pos = _read_varint(value, pos, len(value))
            values.append(item)
    return values


def _message_field(fields: _Fields, number: int) -> _Fields:
    """The sub-message in field ``number`` (parts of a repeated-and-merged message concatenated)."""
    parts = fields.get(number, [])
    if any(not isinstance(part, bytes) for part in parts):
        raise _MalformedError(f"field {number} should be a message")
    return _decode_proto(b"".join(parts))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The bundle protos
# --------------------------------------------------------------------------------------------

# tensorflow/core/framework/types.proto
_DTYPE_ENUM_NAMES = {
    0: "DT_INVALID", 1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
    6: "DT_INT8", 7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64", 10: "DT_BOOL", 11: "DT_QINT8",
    12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16", 15: "DT_QINT16", 16: "DT_QUINT16",
    17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF", 20: "DT_RESOURCE", 21: "DT_VARIANT",
    22: "DT_UINT32", 23: "DT_UINT64", 24: "DT_FLOAT8_E5M2", 25: "DT_FLOAT8_E4M3FN",
}
# Enum -> (TF's short name, numpy dtype of the bytes in a little-endian file).
_FIXED_WIDTH_DTYPES: dict[int, tuple[str, np.dtype]] = {
    enum: (name, np.dtype(code)) for enum, name, code in [
        (1, "float32", "<f4"), (2, "float64", "<f8"), (3, "int32", "<i4"), (4, "uint8", "u1"),
        (5, "int16", "<i2"), (6, "int8", "i1"), (8, "complex64", "<c8"), (9, "int64", "<i8"),
        (10, "bool", "?"), (14, "bfloat16", "<u2"), (17, "uint16", "<u2"),
        (18, "complex128", "<c16"), (19, "float16", "<f2"), (22, "uint32", "<u4"),
        (23, "uint64", "<u8"),
    ]
}
_DT_STRING = 7
_DT_BFLOAT16 = 14

_BUNDLE_FORMAT_VERSION = 1  # the consumer version we implement (TF's kTensorBundleVersion)


@dataclass(frozen=True)
class _BundleHeader:
    num_shards: int
    big_endian: bool
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


@dataclass(frozen=True)
class _BundleEntry:
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc32c: int
    num_slices: int

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)  # exact (no int64 overflow); 1 for a scalar


def _parse_bundle_header(value: bytes) -> _BundleHeader:
    fields = _decode_proto(value)
    version = _message_field(fields, 3)
    return _BundleHeader(
        num_shards=_int_field(fields, 1, bits=32),
        big_endian=_int_field(fields, 2, bits=32) == 1,
        producer=_int_field(version, 1, bits=32),
        min_consumer=_int_field(version, 2, bits=32),
        bad_consumers=tuple(_repeated_int_field(version, 3)),
    )


def _parse_shape(fields: _Fields) -> tuple[int, ...]:
    if _int_field(fields, 3):
        raise _MalformedError("the shape has unknown rank")
    dims = []
    for dim_bytes in fields.get(2, []):
        if not isinstance(dim_bytes, bytes):
            raise _MalformedError("a shape dimension should be a message")
        size = _int_field(_decode_proto(dim_bytes), 1)
        if size < 0:
            raise _MalformedError(f"the shape has an unknown ({size}) dimension")
        dims.append(size)
    return tuple(dims)


def _parse_bundle_entry(value: bytes) -> _BundleEntry:
    fields = _decode_proto(value)
    return _BundleEntry(
        dtype_enum=_int_field(fields, 1, bits=32),
        shape=_parse_shape(_message_field(fields, 2)),
        shard_id=_int_field(fields, 3, bits=32),
        offset=_int_field(fields, 4),
        size=_int_field(fields, 5),
        masked_crc32c=_fixed32_field(fields, 6),
        num_slices=len(fields.get(7, [])),
    )


# --------------------------------------------------------------------------------------------
# The sorted-table (LevelDB SSTable) format of the .index file
# --------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic number
_BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
_COMPRESSION_NAMES = {0: "none", 1: "snappy"}


@dataclass(frozen=True)
class _BlockHandle:
    offset: int
    size: int


def _decode_block_handle(buf: bytes, pos: int, end: int) -> tuple[_BlockHandle, int]:
    offset, pos = _read_varint(buf, pos, end)
    size, pos = _read_varint(buf, pos, end)
    return _BlockHandle(offset, size), pos


def _read_footer(index: bytes, label: str) -> tuple[_BlockHandle, _BlockHandle]:
    """The (metaindex, index) block handles from the table's last 48 bytes."""
    if len(index) < _FOOTER_SIZE:
        raise CheckpointError(
            f"{label}: not a TensorFlow V2 checkpoint index: the file has {len(index)} bytes, "
            f"fewer than the {_FOOTER_SIZE}-byte table footer (truncated?)"
        )
    footer_start = len(index) - _FOOTER_SIZE
    magic = int.from_bytes(index[-8:], "little")
    if magic != _TABLE_MAGIC:
        raise CheckpointError(
            f"{label}: not a TensorFlow V2 checkpoint index: bad magic number "
            f"0x{magic:016x} at the end of the file (truncated, or not an index file?)"
        )
    try:
        metaindex, pos = _decode_block_handle(index, footer_start, footer_start + 40)
        index_block, _ = _decode_block_handle(index, pos, footer_start + 40)
    except _MalformedError as error:
        raise CheckpointError(f"{label}: corrupt table footer: {error}") from None
    return metaindex, index_block


def _read_block(index: bytes, handle: _BlockHandle, label: str, what: str) -> bytes:
    """The contents of one table block, after checking its bounds, checksum and compression."""
    blocks_end = len(index) - _FOOTER_SIZE  # blocks come before the footer
    if handle.offset + handle.size + _BLOCK_TRAILER_SIZE > blocks_end:
        raise CheckpointError(
            f"{label}: {what} at offset {handle.offset} (size {handle.size}) runs past the end of "
            f"the table's blocks at {blocks_end} (truncated or corrupt file)"
        )
    contents_end = handle.offset + handle.size
    contents = index[handle.offset:contents_end]
    compression = index[contents_end]
    stored_crc = int.from_bytes(index[contents_end + 1:contents_end + 5], "little")
    # The checksum covers the block and its compression-type byte.
    actual_crc = _mask_crc(_crc32c(index[contents_end:contents_end + 1], _crc32c(contents)))
    if actual_crc != stored_crc:
        raise CheckpointError(
            f"{label}: block checksum mismatch in the {what} at offset {handle.offset} "
            f"(corrupt file)"
        )
    if compression != 0:
        name = _COMPRESSION_NAMES.get(compression, "unknown")
        raise CheckpointError(
            f"{label}: the {what} at offset {handle.offset} uses compression type {compression} "
            f"({name}); only uncompressed index blocks, which TensorFlow writes, are supported"
        )
    return contents


def _iterate_block(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of a block.

    Keys are prefix-compressed: each entry is varint32 shared-prefix length, varint32 unshared
    length, varint32 value length, the unshared key bytes, the value. A trailing array of uint32
    "restart" offsets (entries with no shared prefix, for binary search) ends with its count.
    """
    if len(block) < 4:
        raise _MalformedError("a block is too short for its restart count")
    num_restarts = int.from_bytes(block[-4:], "little")
    if num_restarts > (len(block) - 4) // 4:
        raise _MalformedError(f"a block claims {num_restarts} restart points, more than fit")
    entries_end = len(block) - 4 * (num_restarts + 1)
    pos, key = 0, b""
    while pos < entries_end:
        shared, pos = _read_varint(block, pos, entries_end)
        unshared, pos = _read_varint(block, pos, entries_end)
        value_length, pos = _read_varint(block, pos, entries_end)
        if shared > len(key):
            raise _MalformedError(f"an entry shares {shared} key bytes with a {len(key)}-byte key")
        if pos + unshared + value_length > entries_end:
            raise _MalformedError("an entry runs past the end of its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_length]
        pos += value_length


def _read_table(index: bytes, label: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of the sorted table, checked to be in strictly increasing order."""
    metaindex_handle, index_handle = _read_footer(index, label)
    # TF's tables have no filters, so the metaindex block is empty; it is only checked for damage.
    _read_block(index, metaindex_handle, label, "metaindex block")
    index_block = _read_block(index, index_handle, label, "index block")
    pairs: list[tuple[bytes, bytes]] = []
    try:
        for _, handle_bytes in _iterate_block(index_block):
            handle, _ = _decode_block_handle(handle_bytes, 0, len(handle_bytes))
            data_block = _read_block(index, handle, label, "data block")
            for key, value in _iterate_block(data_block):
                if pairs and key <= pairs[-1][0]:
                    raise _MalformedError(f"keys out of order at {key!r}")
                pairs.append((key, value))
    except _MalformedError as error:
        raise CheckpointError(f"{label}: corrupt table: {error}") from None
    return pairs


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_FILE = "checkpoint"  # written by tf.train.Saver / CheckpointManager next to checkpoints
_MODEL_CHECKPOINT_PATH = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.M)
_TEXT_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _data_filename(prefix: Path, shard_id: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard_id:05d}-of-{num_shards:05d}")


def _index_filename(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def _unescape_text_proto(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        octal, hexadecimal, char = match.groups()
        if octal or hexadecimal:
            return chr(int(octal, 8) if octal else int(hexadecimal, 16))
        return _SIMPLE_ESCAPES.get(char, char)

    return _TEXT_ESCAPE.sub(replace, text)


def _prefix_from_state_file(directory: Path, state_file: Path) -> Path:
    """The latest checkpoint named by a ``checkpoint`` state file (a text-format proto)."""
    try:
        text = state_file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise CheckpointError(f"{state_file}: cannot read the state file: {error}") from None
    match = _MODEL_CHECKPOINT_PATH.search(text)
    if match is None:
        raise CheckpointError(f"{state_file}: no model_checkpoint_path in the state file")
    named = Path(_unescape_text_proto(match.group(1)))
    candidates = [directory / named]  # relative paths are relative to the state file's folder
    if named.is_absolute():
        # Saver writes absolute paths by default; after the folder is moved, look next to the file.
        candidates.append(directory / named.name)
    for prefix in candidates:
        if _index_filename(prefix).is_file():
            return prefix
    raise CheckpointError(
        f"{state_file}: model_checkpoint_path names '{named}', but there is no "
        f"{_index_filename(candidates[-1])}"
    )


def _prefix_from_directory(directory: Path) -> Path:
    state_file = directory / _STATE_FILE
    if state_file.is_file():
        return _prefix_from_state_file(directory, state_file)
    index_files = sorted(directory.glob("*.index"))
    if not index_files:
        raise CheckpointError(f"{directory}: no TensorFlow checkpoint here (no *.index file)")
    if len(index_files) > 1:
        listed = ", ".join(path.name for path in index_files)
        raise CheckpointError(
            f"{directory}: holds {len(index_files)} checkpoints ({listed}) and no '{_STATE_FILE}' "
            f"file saying which is current; pass the prefix or .index file of the one you want"
        )
    return index_files[0].with_suffix("")


def _resolve_prefix(path: Path) -> Path:
    """The checkpoint prefix for a prefix, an ``.index`` or ``.data-*`` file, or a folder."""
    if path.is_dir():
        return _prefix_from_directory(path)
    if path.name.endswith(".index"):
        prefix = path.with_name(path.name[: -len(".index")])
    else:
        prefix = path.with_name(_DATA_SUFFIX.sub("", path.name))
    index_file = _index_filename(prefix)
    if index_file.is_file():
        return prefix
    if path.is_file() and path != index_file:
        raise CheckpointError(
            f"{path}: not a TensorFlow V2 checkpoint: there is no {index_file.name} next to it "
            f"(TF V1 checkpoints and other formats are not supported)"
        )
    raise CheckpointError(f"{path}: no TensorFlow checkpoint here: missing index file {index_file}")


# --------------------------------------------------------------------------------------------
# Decoding tensor bytes
# --------------------------------------------------------------------------------------------


def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32, so widening the bits is exact (NaNs included)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _decode_strings(buf: bytes, count: int) -> tuple[list[bytes], int]:
    """Split a string tensor's bytes; return the elements and the CRC32C TF computes over them.

    TF's layout: ``count`` varint64 lengths, a 4-byte masked CRC32C of the lengths, then the
    string bytes back to back. Quirk: the CRCs are over each length as a little-endian uint32
    (uint64 if it does not fit), not over the varint bytes actually stored, and the tensor's CRC
    covers the lengths, the stored length checksum and the string bytes, in that order.
    """
    lengths, pos, crc = [], 0, 0
    for _ in range(count):
        length, pos = _read_varint(buf, pos, len(buf))
        lengths.append(length)
        crc = _crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
    if pos + 4 > len(buf):
        raise _MalformedError("the string lengths run past the tensor's bytes")
    stored_lengths_crc = buf[pos:pos + 4]
    if int.from_bytes(stored_lengths_crc, "little") != _mask_crc(crc):
        raise _MalformedError("the string lengths' checksum does not match (corrupt data file)")
    crc = _crc32c(stored_lengths_crc, crc)
    start = pos + 4
    if start + sum(lengths) != len(buf):
        raise _MalformedError(
            f"the string lengths add up to {start + sum(lengths)} bytes, not the {len(buf)} stored"
        )
    strings = []
    for length in lengths:
        strings.append(buf[start:start + length])
        start += length
    return strings, _crc32c(buf[pos + 4:], crc)


# --------------------------------------------------------------------------------------------
# The public reader
# --------------------------------------------------------------------------------------------


class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened for reading, one tensor at a time.

    ``path`` is the checkpoint prefix (``.../model.ckpt``), its ``.index`` or a ``.data-*`` file,
    or a folder: the checkpoint its ``checkpoint`` state file names, else its only ``*.index``.
    The index is parsed (and its block checksums checked) here; data shards are opened on first
    use. ``verify`` (default for :meth:`read`) checks each tensor's CRC32C when it is read.

    Use as a context manager, or call :meth:`close`, to close the data files::

        with TFCheckpoint("pnasnet-5_large_2017_12_13/model.ckpt") as ckpt:
            for name in ckpt.names():
                print(name, ckpt.shape(name), ckpt.dtype(name))
            weights = ckpt.read("cell_0/1x1/weights")
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self._open_shards: dict[int, tuple[io.FileIO, int]] = {}  # shard id -> (file, its size)
        self._lock = threading.Lock()  # a read is seek + read on a shared file
        self._verify = verify
        self._prefix = _resolve_prefix(Path(path))
        self._index_path = _index_filename(self._prefix)
        self._header, self._entries = self._load_index(self._index_path)

    # -- index ------------------------------------------------------------------------------

    @staticmethod
    def _load_index(index_path: Path) -> tuple[_BundleHeader, dict[str, _BundleEntry]]:
        label = str(index_path)
        try:
            index = index_path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"{label}: cannot read the index file: {error}") from None
        pairs = _read_table(index, label)
        if not pairs or pairs[0][0] != b"":
            raise CheckpointError(f"{label}: not a TensorFlow V2 checkpoint index: no header entry")
        try:
            header = _parse_bundle_header(pairs[0][1])
        except _MalformedError as error:
            raise CheckpointError(f"{label}: corrupt bundle header: {error}") from None
        TFCheckpoint._check_header(header, label)

        entries: dict[str, _BundleEntry] = {}
        for key, value in pairs[1:]:
            # A partitioned variable's slices are stored under keys made by TF's OrderedCode
            # (they start with a zero byte); the variable's own key lists them in `slices`.
            if key.startswith(b"\x00"):
                continue
            try:
                name = key.decode("utf-8")
                entry = _parse_bundle_entry(value)
            except (UnicodeDecodeError, _MalformedError) as error:
                raise CheckpointError(f"{label}: corrupt entry for key {key!r}: {error}") from None
            TFCheckpoint._check_entry(entry, name, header, label)
            entries[name] = entry
        return header, entries

    @staticmethod
    def _check_header(header: _BundleHeader, label: str) -> None:
        if header.big_endian:
            raise CheckpointError(f"{label}: big-endian checkpoints are not supported")
        if header.num_shards < 1:
            raise CheckpointError(f"{label}: corrupt header: {header.num_shards} data shards")
        too_new = header.min_consumer > _BUNDLE_FORMAT_VERSION
        if too_new or _BUNDLE_FORMAT_VERSION in header.bad_consumers:
            raise CheckpointError(
                f"{label}: tensor-bundle format version {header.producer} (needs a reader of at "
                f"least version {header.min_consumer}); this reader implements version "
                f"{_BUNDLE_FORMAT_VERSION}"
            )

    @staticmethod
    def _check_entry(entry: _BundleEntry, name: str, header: _BundleHeader, label: str) -> None:
        if entry.num_slices:
            return  # a partitioned variable's entry has no data of its own; read() refuses it
        if not 0 <= entry.shard_id < header.num_shards:
            raise CheckpointError(
                f"{label}: tensor '{name}' is in shard {entry.shard_id}, but the checkpoint has "
                f"{header.num_shards} shard(s) (corrupt index)"
            )
        if entry.offset < 0 or entry.size < 0:
            raise CheckpointError(
                f"{label}: tensor '{name}' has offset {entry.offset} and size {entry.size} "
                f"(corrupt index)"
            )

    # -- metadata ---------------------------------------------------------------------------

    @property
    def prefix(self) -> Path:
        """The checkpoint prefix (``.../model.ckpt``)."""
        return self._prefix

    @property
    def num_shards(self) -> int:
        """How many ``.data-*`` files the checkpoint has."""
        return self._header.num_shards

    def names(self) -> list[str]:
        """The tensor names, sorted (internal slice keys of partitioned variables left out)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape (``()`` for a scalar)."""
        return self._entry(name).shape

    def dtype(self, name: str) -> np.dtype:
        """The numpy dtype :meth:`read` returns (float32 for bfloat16, object for strings)."""
        entry = self._entry(name)
        if entry.dtype_enum == _DT_STRING:
            return np.dtype(object)
        if entry.dtype_enum == _DT_BFLOAT16:
            return np.dtype(np.float32)
        return self._fixed_width_dtype(entry, name)[1].newbyteorder("=")

    def tf_dtype(self, name: str) -> str:
        """TensorFlow's name for the stored dtype: ``"float32"``, ``"bfloat16"``, ``"string"``..."""
        entry = self._entry(name)
        if entry.dtype_enum == _DT_STRING:
            return "string"
        return self._fixed_width_dtype(entry, name)[0]

    def __repr__(self) -> str:
        return f"TFCheckpoint('{self._prefix}', {len(self)} tensors, {self.num_shards} shard(s))"

    def _entry(self, name: str) -> _BundleEntry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"no tensor '{name}' in checkpoint {self._prefix}{hint}") from None

    def _fixed_width_dtype(self, entry: _BundleEntry, name: str) -> tuple[str, np.dtype]:
        try:
            return _FIXED_WIDTH_DTYPES[entry.dtype_enum]
        except KeyError:
            enum_name = _DTYPE_ENUM_NAMES.get(entry.dtype_enum, "unknown")
            raise CheckpointError(
                f"{self._index_path}: unsupported dtype enum {entry.dtype_enum} ({enum_name}) for "
                f"tensor '{name}'"
            ) from None

    # -- data -------------------------------------------------------------------------------

    def read(self, name: str, *, verify: bool | None = None) -> np.ndarray:
        """The tensor's value, reading only its bytes; ``verify`` overrides the CRC32C check."""
        entry = self._entry(name)
        verify = self._verify if verify is None else verify
        if entry.num_slices:
            raise CheckpointError(
                f"{self._index_path}: sliced/partitioned variable '{name}' ({entry.num_slices} "
                f"slices) is not supported"
            )
        if entry.dtype_enum == _DT_STRING:
            return self._read_strings(entry, name, verify)
        _, file_dtype = self._fixed_width_dtype(entry, name)
        expected_size = entry.num_elements * file_dtype.itemsize
        if entry.size != expected_size:
            raise CheckpointError(
                f"{self._index_path}: tensor '{name}' of shape {entry.shape} and dtype "
                f"{file_dtype.name} should have {expected_size} bytes, the index says {entry.size} "
                f"(corrupt index)"
            )
        raw = self._read_raw(entry, name)
        if verify:
            self._check_crc(entry, name, _crc32c(raw))
        values = raw.view(file_dtype)
        if entry.dtype_enum == _DT_BFLOAT16:
            values = _bfloat16_bits_to_float32(values)
        elif not values.dtype.isnative:
            values = values.astype(values.dtype.newbyteorder("="))
        return values.reshape(entry.shape)

    def to_dict(self, names: Iterable[str] | None = None, *, verify: bool | None = None
                ) -> dict[str, np.ndarray]:
        """``{name: array}`` for ``names`` (default: all tensors), in sorted order."""
        chosen = self.names() if names is None else list(names)
        return {name: self.read(name, verify=verify) for name in chosen}

    def _read_strings(self, entry: _BundleEntry, name: str, verify: bool) -> np.ndarray:
        raw = self._read_raw(entry, name)
        strings: list[bytes] = []
        if entry.size:  # TF writes at least the lengths' checksum, but its reader accepts nothing
            try:
                strings, crc = _decode_strings(raw.tobytes(), entry.num_elements)
            except _MalformedError as error:
                path = self._data_path(entry)
                raise CheckpointError(f"{path}: tensor '{name}': {error}") from None
            if verify:
                self._check_crc(entry, name, crc)
        if len(strings) != entry.num_elements:
            raise CheckpointError(
                f"{self._data_path(entry)}: tensor '{name}' has no bytes for its "
                f"{entry.num_elements} strings"
            )
        values = np.empty(len(strings), dtype=object)
        values[:] = strings
        return values.reshape(entry.shape)

    def _check_crc(self, entry: _BundleEntry, name: str, actual_crc: int) -> None:
        if _mask_crc(actual_crc) != entry.masked_crc32c:
            raise CheckpointError(
                f"{self._data_path(entry)}: checksum mismatch for tensor '{name}' (bytes "
                f"{entry.offset}..{entry.offset + entry.size}): the data file is corrupt "
                f"(read with verify=False to skip the check)"
            )

    def _data_path(self, entry: _BundleEntry) -> Path:
        return _data_filename(self._prefix, entry.shard_id, self._header.num_shards)

    def _read_raw(self, entry: _BundleEntry, name: str) -> np.ndarray:
        """The entry's bytes in a new array, after checking that they lie within the file."""
        if entry.size == 0:
            return np.empty(0, dtype=np.uint8)  # needs no file (TF's zero-size tensors)
        with self._lock:
            file, file_size = self._shard(entry, name)
            path = self._data_path(entry)
            end = entry.offset + entry.size
            if end > file_size:
                raise CheckpointError(
                    f"{path}: tensor '{name}' needs bytes {entry.offset}..{end} but the file has "
                    f"{file_size} bytes (truncated?)"
                )
            raw = np.empty(entry.size, dtype=np.uint8)
            try:
                file.seek(entry.offset)
                view, filled = raw.data, 0
                while filled < entry.size:  # a raw read may return less than asked
                    count = file.readinto(view[filled:])
                    if not count:
                        raise CheckpointError(
                            f"{path}: tensor '{name}': the file ended at byte "
                            f"{entry.offset + filled}, before byte {end} (truncated while open?)"
                        )
                    filled += count
            except OSError as error:
                raise CheckpointError(f"{path}: cannot read tensor '{name}': {error}") from None
        return raw

    def _shard(self, entry: _BundleEntry, name: str) -> tuple[io.FileIO, int]:
        """The open data file holding the entry, and its size (opened on first use)."""
        if entry.shard_id not in self._open_shards:
            path = self._data_path(entry)
            try:
                # Unbuffered, so that readinto goes straight into the array; kept open for reuse.
                file = io.FileIO(path, "rb")
            except FileNotFoundError:
                raise CheckpointError(
                    f"missing shard file {path}: tensor '{name}' is stored in shard "
                    f"{entry.shard_id} of {self._header.num_shards}"
                ) from None
            except OSError as error:
                raise CheckpointError(f"{path}: cannot open the data file: {error}") from None
            self._open_shards[entry.shard_id] = (file, os.fstat(file.fileno()).st_size)
        return self._open_shards[entry.shard_id]

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the data files opened so far (the reader can still be used; they reopen)."""
        with self._lock:
            for file, _ in self._open_shards.values():
                file.close()
            self._open_shards.clear()

    def __enter__(self) -> TFCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown or after a failed __init__ there may be nothing left to close.
        with contextlib.suppress(Exception):
            self.close()


def read_tf_checkpoint(path: str | os.PathLike[str], *, verify: bool = True
                       ) -> dict[str, np.ndarray]:
    """Every tensor of a V2 checkpoint as ``{name: array}`` (see :class:`TFCheckpoint`)."""
    with TFCheckpoint(path, verify=verify) as checkpoint:
        return checkpoint.to_dict()
