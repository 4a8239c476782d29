"""The numpy-only TensorFlow V2 checkpoint reader, against checkpoints real TensorFlow wrote.

The fixtures in ``tests/fixtures/tf_ckpt`` come from ``tools/make_checkpoint_format_fixtures.py``
(TensorFlow 2.12); the expected values there are what TF was asked to write and read back itself.
Damage is always done to copies in ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from pnasnet.weights.tf_checkpoint import (
    CheckpointError,
    TFCheckpoint,
    _read_table,
    read_tf_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tf_ckpt"
DTYPES = FIXTURES / "dtypes"
SHARDED = FIXTURES / "sharded"
SLICED = FIXTURES / "sliced"
SINGLE_DATA = "ckpt.data-00000-of-00001"
BIG_TENSOR = "cell_0/comb_iter_0/left/separable_3x3_1/pointwise_weights"  # float32 [1,1,64,32]


def _expected_numeric(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}_expected.npz") as data:
        return {key: data[key] for key in data.files}


def _expected_strings() -> dict:
    return json.loads((FIXTURES / "dtypes_expected_strings.json").read_text())


def _assert_bit_exact(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert actual.dtype == expected.dtype, name
    assert actual.shape == expected.shape, name
    assert actual.tobytes() == expected.tobytes(), name  # NaN payloads and -0.0 included


def _copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    """Copy a fixture checkpoint folder into tmp_path; return its prefix there."""
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target / "ckpt"


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def test_every_dtype_and_shape_reads_back_what_tensorflow_wrote() -> None:
    numeric = _expected_numeric("dtypes")
    strings = _expected_strings()
    with TFCheckpoint(DTYPES / "ckpt") as ckpt:
        assert ckpt.names() == sorted([*numeric, *strings["strings"]])
        assert len(ckpt) == len(numeric) + len(strings["strings"])
        for name, expected in numeric.items():
            value = ckpt.read(name)
            _assert_bit_exact(value, expected, name)
            assert ckpt.shape(name) == expected.shape
            assert ckpt.dtype(name) == expected.dtype
            assert ckpt.tf_dtype(name) == strings["tf_dtypes"][name]
        for name, expected in strings["strings"].items():
            value = ckpt.read(name)
            assert value.dtype.kind == "O" and ckpt.dtype(name).kind == "O"
            assert list(value.shape) == expected["shape"] == list(ckpt.shape(name))
            assert [element.hex() for element in value.reshape(-1)] == expected["hex"], name
            assert ckpt.tf_dtype(name) == "string"


def test_the_fixture_covers_every_supported_dtype_scalars_and_zero_size_tensors() -> None:
    tf_dtypes = set(_expected_strings()["tf_dtypes"].values())
    assert tf_dtypes == {
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128", "string",
    }
    with TFCheckpoint(DTYPES) as ckpt:
        assert ckpt.read("global_step").shape == () and ckpt.read("global_step") == 123456789012
        assert ckpt.read("cell_0/comb_iter_0/left/global_step") == -7
        assert ckpt.read("zero_size/int64_3x0x2").shape == (3, 0, 2)
        assert ckpt.read("string/empty_vector").shape == (0,)
        assert ckpt.read("string/scalar")[()] == b"hello checkpoint"


def test_bfloat16_is_widened_to_float32_exactly() -> None:
    with TFCheckpoint(DTYPES) as ckpt:
        value = ckpt.read("bfloat16/matrix")
        scalar = ckpt.read("bfloat16/scalar")
    assert value.dtype == np.float32 and scalar == np.float32(-0.375)
    bits = value.view(np.uint32)
    assert not (bits & 0xFFFF).any()  # nothing below bfloat16's precision was invented
    assert np.isnan(value.reshape(-1)[6]) and np.signbit(value.reshape(-1)[1])


def test_arrays_are_native_writable_and_own_their_memory() -> None:
    with TFCheckpoint(DTYPES) as ckpt:
        for name in ckpt.names():
            value = ckpt.read(name)
            assert value.dtype.isnative and value.flags.writeable and value.flags.c_contiguous
        value = ckpt.read(BIG_TENSOR)
        value[...] = 0  # must not touch anything the reader keeps
        assert ckpt.read(BIG_TENSOR).any()


def test_several_data_shards() -> None:
    expected = _expected_numeric("sharded")
    with TFCheckpoint(SHARDED / "ckpt") as ckpt:
        assert ckpt.num_shards == 3
        assert ckpt.names() == sorted(expected)
        for name, value in expected.items():
            _assert_bit_exact(ckpt.read(name), value, name)
    assert {entry.shard_id for entry in ckpt._entries.values()} == {0, 1, 2}


def test_read_tf_checkpoint_and_to_dict() -> None:
    expected = _expected_numeric("sharded")
    everything = read_tf_checkpoint(SHARDED)
    assert list(everything) == sorted(expected)
    for name, value in expected.items():
        _assert_bit_exact(everything[name], value, name)
    with TFCheckpoint(SHARDED) as ckpt:
        assert list(ckpt.to_dict(["global_step"])) == ["global_step"]
        assert "global_step" in ckpt and "nope" not in ckpt
        assert list(ckpt) == ckpt.names()


def test_unknown_name_is_a_key_error_with_suggestions() -> None:
    with TFCheckpoint(SHARDED) as ckpt:
        with pytest.raises(KeyError, match="global_step"):
            ckpt.read("global_stpe")
        with pytest.raises(KeyError):
            ckpt.shape("nope")


def test_close_and_reuse() -> None:
    ckpt = TFCheckpoint(DTYPES)
    first = ckpt.read("global_step")
    ckpt.close()
    assert ckpt.read("global_step") == first  # data files reopen on demand
    ckpt.close()


# --------------------------------------------------------------------------------------------
# Ways to name a checkpoint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative_path",
    ["sharded/ckpt", "sharded/ckpt.index", "sharded/ckpt.data-00001-of-00003", "sharded",
     "dtypes"],  # sharded/ has a `checkpoint` state file, dtypes/ a single *.index
)
def test_prefix_index_data_and_directory_forms(relative_path: str) -> None:
    folder = relative_path.split("/")[0]
    with TFCheckpoint(FIXTURES / relative_path) as ckpt:
        assert ckpt.prefix == FIXTURES / folder / "ckpt"
    with TFCheckpoint(str(FIXTURES / relative_path)) as ckpt:  # str works as well as Path
        assert ckpt.prefix == FIXTURES / folder / "ckpt"


def test_directory_with_two_checkpoints_and_no_state_file(tmp_path: Path) -> None:
    for prefix in ("model.ckpt-100", "model.ckpt-200"):
        shutil.copy(DTYPES / "ckpt.index", tmp_path / f"{prefix}.index")
    with pytest.raises(CheckpointError, match=r"model\.ckpt-100\.index, model\.ckpt-200\.index"):
        TFCheckpoint(tmp_path)
    # With a state file the current one is found.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-200"\n')
    shutil.copy(DTYPES / SINGLE_DATA, tmp_path / "model.ckpt-200.data-00000-of-00001")
    with TFCheckpoint(tmp_path) as ckpt:
        assert ckpt.prefix.name == "model.ckpt-200" and ckpt.read("global_step") == 123456789012


def test_state_file_with_a_stale_absolute_path_finds_the_checkpoint_beside_it(tmp_path: Path
                                                                              ) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    (prefix.parent / "checkpoint").write_text(
        'model_checkpoint_path: "/machine/that/trained/it/ckpt"\n'
        'all_model_checkpoint_paths: "/machine/that/trained/it/ckpt"\n'
    )
    assert TFCheckpoint(prefix.parent).prefix == prefix
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "ckpt-999"\n')
    with pytest.raises(CheckpointError, match=r"ckpt-999.*no .*ckpt-999\.index"):
        TFCheckpoint(prefix.parent)


def test_empty_directory_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no \*\.index file"):
        TFCheckpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing index file .*nothing\.index"):
        TFCheckpoint(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------
# Damaged data files
# --------------------------------------------------------------------------------------------


def test_flipped_data_byte_fails_the_tensor_checksum(tmp_path: Path) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    entry = TFCheckpoint(prefix)._entries[BIG_TENSOR]
    _flip_byte(prefix.with_name(SINGLE_DATA), entry.offset + 1000)

    ckpt = TFCheckpoint(prefix)
    with pytest.raises(CheckpointError) as raised:
        ckpt.read(BIG_TENSOR)
    message = str(raised.value)
    assert "checksum mismatch" in message and f"'{BIG_TENSOR}'" in message
    assert SINGLE_DATA in message

    unverified = ckpt.read(BIG_TENSOR, verify=False)
    expected = _expected_numeric("dtypes")[BIG_TENSOR]
    assert unverified.shape == expected.shape
    assert (unverified != expected).sum() == 1  # exactly the float holding the flipped byte
    assert TFCheckpoint(prefix, verify=False).read(BIG_TENSOR).tobytes() == unverified.tobytes()
    _assert_bit_exact(ckpt.read("global_step"), _expected_numeric("dtypes")["global_step"], "")


@pytest.mark.parametrize("where", ["lengths", "length checksum", "string bytes"])
def test_flipped_byte_in_a_string_tensor(tmp_path: Path, where: str) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    entry = TFCheckpoint(prefix)._entries["string/matrix"]
    # 6 varint lengths (the 300-byte string takes two bytes), 4 checksum bytes, then the strings.
    offset = {"lengths": 1, "length checksum": 8, "string bytes": 20}[where]
    _flip_byte(prefix.with_name(SINGLE_DATA), entry.offset + offset)
    with pytest.raises(CheckpointError, match=r"string/matrix"):
        TFCheckpoint(prefix).read("string/matrix")


def test_flipped_string_bytes_with_verify_false_still_decode(tmp_path: Path) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    entry = TFCheckpoint(prefix)._entries["string/scalar"]
    data = prefix.with_name(SINGLE_DATA)
    _flip_byte(data, entry.offset + entry.size - 1)  # last byte of "hello checkpoint"
    value = TFCheckpoint(prefix, verify=False).read("string/scalar")[()]
    assert value[:-1] == b"hello checkpoin" and value != b"hello checkpoint"


@pytest.mark.parametrize("keep_fraction", [0.0, 0.3, 0.9])
def test_truncated_data_file(tmp_path: Path, keep_fraction: float) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    data = prefix.with_name(SINGLE_DATA)
    cut = int(data.stat().st_size * keep_fraction)
    _truncate(data, cut)
    ckpt = TFCheckpoint(prefix)
    for name in ckpt.names():
        entry = ckpt._entries[name]
        if entry.offset + entry.size <= cut or entry.size == 0:
            ckpt.read(name)  # tensors wholly before the cut (or with no bytes) are intact
        else:
            with pytest.raises(CheckpointError, match=rf"{SINGLE_DATA}.*'{name}'.*truncated"):
                ckpt.read(name)
    with pytest.raises(CheckpointError):
        ckpt.to_dict()


def test_missing_shard(tmp_path: Path) -> None:
    prefix = _copy_checkpoint(SHARDED, tmp_path)
    prefix.with_name("ckpt.data-00001-of-00003").unlink()
    ckpt = TFCheckpoint(prefix)
    by_shard = {entry.shard_id: name for name, entry in ckpt._entries.items()}
    ckpt.read(by_shard[0])
    ckpt.read(by_shard[2])
    with pytest.raises(CheckpointError, match=r"missing shard file .*ckpt\.data-00001-of-00003"):
        ckpt.read(by_shard[1])


# --------------------------------------------------------------------------------------------
# Damaged or foreign index files
# --------------------------------------------------------------------------------------------


def _index_cut_points() -> list[int]:
    size = (DTYPES / "ckpt.index").stat().st_size
    # empty; inside the first data block; just before the footer; inside the footer; one short
    return [0, 1, 10, 200, size - 49, size - 48, size - 30, size - 8, size - 1]


@pytest.mark.parametrize("cut", _index_cut_points())
def test_truncated_index(tmp_path: Path, cut: int) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    _truncate(prefix.with_name("ckpt.index"), cut)
    with pytest.raises(CheckpointError, match=r"ckpt\.index"):
        TFCheckpoint(prefix)


@pytest.mark.parametrize("cut_start, cut_end", [(100, 110), (0, -48), (-60, -48)])
def test_index_with_bytes_missing_before_an_intact_footer(tmp_path: Path, cut_start: int,
                                                          cut_end: int) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    index = prefix.with_name("ckpt.index")
    data = index.read_bytes()
    index.write_bytes(data[:cut_start] + data[len(data) + cut_end if cut_end < 0 else cut_end:])
    with pytest.raises(CheckpointError, match=r"ckpt\.index: .*(runs past|checksum mismatch)"):
        TFCheckpoint(prefix)


def test_every_flipped_byte_in_the_index_blocks_is_caught(tmp_path: Path) -> None:
    prefix = _copy_checkpoint(DTYPES, tmp_path)
    index = prefix.with_name("ckpt.index")
    original = index.read_bytes()
    reference = TFCheckpoint(prefix)
    for offset in range(len(original)):
        _flip_byte(index, offset)
        if offset < len(original) - 48:  # the blocks: all covered by checksums
            with pytest.raises(CheckpointError, match=r"ckpt\.index: block checksum mismatch"):
                TFCheckpoint(prefix)
        else:  # the footer: an error, or harmless (its zero padding, the unused metaindex)
            try:
                damaged = TFCheckpoint(prefix)
            except CheckpointError:
                pass
            else:
                assert damaged._entries == reference._entries
        index.write_bytes(original)


@pytest.mark.parametrize("content", [b"", b"\x00" * 47, bytes(range(256)) * 8])
def test_a_file_that_is_not_a_checkpoint_index(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.ckpt.index").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"ckpt\.index: not a TensorFlow V2 checkpoint"):
        TFCheckpoint(tmp_path / "model.ckpt")


def test_a_file_without_an_index_beside_it(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(np.random.default_rng(0).bytes(1000))  # e.g. TF V1
    with pytest.raises(CheckpointError, match=r"model\.ckpt: not a TensorFlow V2 checkpoint"):
        TFCheckpoint(tmp_path / "model.ckpt")


def test_partitioned_variables_are_refused_clearly() -> None:
    expected = _expected_numeric("sliced")
    with TFCheckpoint(SLICED) as ckpt:
        # The slices' own (binary, OrderedCode-encoded) keys are hidden.
        assert ckpt.names() == ["partitioned/weights", "plain/weights"]
        assert ckpt.shape("partitioned/weights") == (6, 2)
        _assert_bit_exact(ckpt.read("plain/weights"), expected["plain/weights"], "plain/weights")
        with pytest.raises(CheckpointError, match=r"sliced/partitioned variable 'partitioned/"):
            ckpt.read("partitioned/weights")


# --------------------------------------------------------------------------------------------
# Index layouts TF can write but our small fixtures do not show, re-encoded from TF's entries by
# an independent table writer (below).
# --------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _encode_block(pairs: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(pairs):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        previous = key
    for restart in restarts or [0]:
        out += struct.pack("<I", restart)
    return bytes(out + struct.pack("<I", len(restarts or [0])))


def _short_successor(key: bytes) -> bytes:
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def _encode_table(pairs: list[tuple[bytes, bytes]], *, per_block: int, restart_interval: int,
                  compression: int = 0) -> bytes:
    file = bytearray()

    def append_block(contents: bytes) -> bytes:
        handle = _varint(len(file)) + _varint(len(contents))
        trailer = bytes([compression])
        file.extend(contents + trailer + struct.pack("<I", _masked_crc(contents + trailer)))
        return handle

    index_pairs = []
    for start in range(0, len(pairs), per_block):
        chunk = pairs[start:start + per_block]
        # Any key >= the block's last key and < the next block's first key will do; TF uses the
        # shortest one it can find, and for the last block the "short successor" of its last key.
        is_last = start + per_block >= len(pairs)
        separator = _short_successor(chunk[-1][0]) if is_last else chunk[-1][0]
        index_pairs.append((separator, append_block(_encode_block(chunk, restart_interval))))
    metaindex_handle = append_block(_encode_block([], 1))
    index_handle = append_block(_encode_block(index_pairs, 1))
    footer = (metaindex_handle + index_handle).ljust(40, b"\x00")
    return bytes(file + footer + struct.pack("<Q", 0xDB4775248B80FB57))


def _tf_pairs(folder: Path) -> list[tuple[bytes, bytes]]:
    return _read_table((folder / "ckpt.index").read_bytes(), "fixture")


def _write_index(tmp_path: Path, source: Path, pairs, **table_options) -> Path:
    prefix = _copy_checkpoint(source, tmp_path)
    prefix.with_name("ckpt.index").write_bytes(_encode_table(pairs, **table_options))
    return prefix


@pytest.mark.parametrize("folder", [DTYPES, SHARDED, SLICED])
def test_the_test_table_writer_reproduces_tfs_index_byte_for_byte(folder: Path) -> None:
    # A small index is one data block with a restart point every 16 keys: written the same way,
    # TF's file comes out, which is what lets the tests below trust this writer.
    pairs = _tf_pairs(folder)
    assert len(pairs) > 16 or folder != DTYPES
    rebuilt = _encode_table(pairs, per_block=len(pairs), restart_interval=16)
    assert rebuilt == (folder / "ckpt.index").read_bytes()


@pytest.mark.parametrize("per_block, restart_interval", [(1, 1), (3, 2), (7, 16)])
def test_index_with_many_data_blocks(tmp_path: Path, per_block: int, restart_interval: int) -> None:
    prefix = _write_index(tmp_path, DTYPES, _tf_pairs(DTYPES), per_block=per_block,
                          restart_interval=restart_interval)
    numeric = _expected_numeric("dtypes")
    with TFCheckpoint(prefix) as ckpt:
        assert len(ckpt) == len(numeric) + len(_expected_strings()["strings"])
        for name, expected in numeric.items():
            _assert_bit_exact(ckpt.read(name), expected, name)


def test_snappy_compressed_index_blocks_are_refused(tmp_path: Path) -> None:
    prefix = _write_index(tmp_path, DTYPES, _tf_pairs(DTYPES), per_block=4, restart_interval=16,
                          compression=1)
    with pytest.raises(CheckpointError, match=r"ckpt\.index: .*compression type 1 \(snappy\)"):
        TFCheckpoint(prefix)


def test_keys_out_of_order_are_corruption(tmp_path: Path) -> None:
    pairs = _tf_pairs(DTYPES)
    pairs[3], pairs[4] = pairs[4], pairs[3]
    prefix = _write_index(tmp_path, DTYPES, pairs, per_block=5, restart_interval=2)
    with pytest.raises(CheckpointError, match=r"ckpt\.index: corrupt table: keys out of order"):
        TFCheckpoint(prefix)


def test_big_endian_header_is_refused(tmp_path: Path) -> None:
    pairs = _tf_pairs(DTYPES)
    assert pairs[0][0] == b""
    pairs[0] = (b"", pairs[0][1] + b"\x10\x01")  # endianness = BIG
    prefix = _write_index(tmp_path, DTYPES, pairs, per_block=100, restart_interval=16)
    with pytest.raises(CheckpointError, match=r"ckpt\.index: big-endian checkpoints are not"):
        TFCheckpoint(prefix)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    pairs = _tf_pairs(DTYPES)
    pairs[0] = (b"", pairs[0][1] + b"\x1a\x02\x10\x02")  # version { min_consumer: 2 }
    prefix = _write_index(tmp_path, DTYPES, pairs, per_block=100, restart_interval=16)
    with pytest.raises(CheckpointError, match=r"format version"):
        TFCheckpoint(prefix)


def test_unsupported_dtype_is_refused_when_read(tmp_path: Path) -> None:
    pairs = _tf_pairs(DTYPES)
    position = [key for key, _ in pairs].index(b"float32/scalar")
    key, value = pairs[position]
    assert value[:2] == b"\x08\x01"  # field 1 (dtype) = DT_FLOAT
    pairs[position] = (key, b"\x08\x15" + value[2:])  # DT_VARIANT
    prefix = _write_index(tmp_path, DTYPES, pairs, per_block=100, restart_interval=16)
    with TFCheckpoint(prefix) as ckpt:
        assert ckpt.shape("float32/scalar") == ()
        ckpt.read("global_step")  # the rest stays readable
        with pytest.raises(CheckpointError, match=r"unsupported dtype enum 21 \(DT_VARIANT\) for "
                                                  r"tensor 'float32/scalar'"):
            ckpt.read("float32/scalar")


def test_entry_pointing_past_the_end_of_its_shard(tmp_path: Path) -> None:
    pairs = _tf_pairs(SHARDED)
    position = [key for key, _ in pairs].index(b"global_step")
    key, value = pairs[position]
    pairs[position] = (key, value + b"\x20" + _varint(10_000))  # offset = 10000 (last one wins)
    prefix = _write_index(tmp_path, SHARDED, pairs, per_block=100, restart_interval=16)
    with pytest.raises(CheckpointError, match=r"ckpt\.data-00002-of-00003: tensor 'global_step' "
                                              r"needs bytes 10000\.\.10008 but the file has 328 "
                                              r"bytes \(truncated\?\)"):
        TFCheckpoint(prefix).read("global_step")


def test_entry_in_a_shard_the_header_does_not_have(tmp_path: Path) -> None:
    pairs = _tf_pairs(SHARDED)
    pairs[1] = (pairs[1][0], pairs[1][1] + b"\x18\x07")  # shard_id = 7 of 3
    prefix = _write_index(tmp_path, SHARDED, pairs, per_block=100, restart_interval=16)
    with pytest.raises(CheckpointError, match=r"in shard 7, but the checkpoint has 3 shard"):
        TFCheckpoint(prefix)
