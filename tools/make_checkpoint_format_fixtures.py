"""Write small TensorFlow V2 checkpoints that pin down the tensor-bundle format for our tests.

This script needs TensorFlow (tested with tensorflow-cpu 2.12.1); the tests that read its output
do not. Run it from a scratch environment, e.g.::

    python3.11 -m venv $TFENV
    $TFENV/bin/pip install tensorflow-cpu==2.12.1 'numpy<1.24'
    $TFENV/bin/python tools/make_checkpoint_format_fixtures.py --out tests/fixtures/tf_ckpt

It writes, under ``--out``:

* ``dtypes/ckpt.*`` -- one tensor of every dtype our reader supports (scalars, zero-size and
  multi-dimensional tensors, slash-separated names, more than 16 keys so that the index block has
  several restart points), saved with ``tf.raw_ops.SaveV2``, the op that ``tf.train.Saver`` runs.
  Expected values: ``dtypes_expected.npz`` (numeric; bfloat16 as float32 holding the same values)
  and ``dtypes_expected_strings.json`` (string tensors, elements as hex).
* ``sharded/ckpt.*`` -- variables on three logical CPUs saved by ``Saver(sharded=True)``, which
  gives three data shards merged by ``MergeV2Checkpoints``, plus the ``checkpoint`` state file.
  Expected values: ``sharded_expected.npz``.
* ``sliced/ckpt.*`` -- a partitioned variable (stored as slices) next to a plain one, so that the
  reader's refusal of slices is tested on what TF really writes. Expected: ``sliced_expected.npz``.

The expected values come from TensorFlow (what it was asked to write, read back by TF's own
``tf.train.load_checkpoint``), never from our reader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF is imported: quieter logs

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 20171213  # the PNASNet checkpoint's release date; any fixed value works


def _special_floats(dtype: np.dtype) -> np.ndarray:
    """Values where a wrong bit conversion shows: signed zeros, infinities, NaN, subnormals."""
    info = np.finfo(dtype)
    return np.array(
        [0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, np.nan, info.max, info.tiny, info.tiny / 4, 1 / 3],
        dtype=dtype,
    )


def _numeric_tensors(rng: np.random.Generator) -> dict[str, tf.Tensor]:
    """Name -> tensor for every numeric dtype, in a variety of shapes."""

    def ints(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        flat = values.reshape(-1)
        if flat.size >= 2:  # make sure both extremes are present
            flat[0], flat[1] = info.min, info.max
        return values

    bf16_source = np.concatenate(
        [np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 3.0e38, 1.0e-40, 1 / 3]),
         rng.normal(size=14) * 100]
    ).astype(np.float32).reshape(4, 6)
    tensors: dict[str, tf.Tensor] = {
        "global_step": tf.constant(np.int64(123456789012), dtype=tf.int64),
        "cell_0/comb_iter_0/left/global_step": tf.constant(np.int64(-7), dtype=tf.int64),
        "bool/matrix": tf.constant(rng.random((3, 5)) > 0.5),
        "bool/scalar": tf.constant(True),
        "int8/vector": tf.constant(ints(np.int8, (17,))),
        "int16/matrix": tf.constant(ints(np.int16, (4, 3))),
        "int32/tensor3": tf.constant(ints(np.int32, (2, 3, 4))),
        "int32/scalar": tf.constant(np.int32(-2147483648)),
        "int64/vector": tf.constant(ints(np.int64, (9,))),
        "uint8/image": tf.constant(ints(np.uint8, (2, 4, 4, 3))),
        "uint16/matrix": tf.constant(ints(np.uint16, (5, 2))),
        "uint32/vector": tf.constant(ints(np.uint32, (6,))),
        "uint64/vector": tf.constant(ints(np.uint64, (6,))),
        "float16/special": tf.constant(_special_floats(np.float16)),
        "float16/matrix": tf.constant(rng.normal(size=(3, 7)).astype(np.float16)),
        "bfloat16/matrix": tf.constant(bf16_source, dtype=tf.bfloat16),
        "bfloat16/scalar": tf.constant(-0.375, dtype=tf.bfloat16),
        "float32/special": tf.constant(_special_floats(np.float32)),
        "float32/scalar": tf.constant(np.float32(3.25)),
        # 8 KiB: enough to cross buffer boundaries in a naive reader.
        "cell_0/comb_iter_0/left/separable_3x3_1/depthwise_weights":
            tf.constant(rng.normal(size=(3, 3, 64, 1)).astype(np.float32)),
        "cell_0/comb_iter_0/left/separable_3x3_1/pointwise_weights":
            tf.constant(rng.normal(size=(1, 1, 64, 32)).astype(np.float32)),
        "cell_0/comb_iter_0/left/bn_sep_3x3_1/moving_variance":
            tf.constant(rng.random(32).astype(np.float32)),
        "float64/special": tf.constant(_special_floats(np.float64)),
        "float64/matrix": tf.constant(rng.normal(size=(2, 5))),
        "complex64/vector":
            tf.constant((rng.normal(size=4) + 1j * rng.normal(size=4)).astype(np.complex64)),
        "complex128/scalar": tf.constant(np.complex128(1.5 - 2.25j)),
        "zero_size/float32_0": tf.constant(np.zeros((0,), dtype=np.float32)),
        "zero_size/int64_3x0x2": tf.constant(np.zeros((3, 0, 2), dtype=np.int64)),
    }
    return tensors


def _string_tensors() -> dict[str, tf.Tensor]:
    long_text = ("PNASNet-5 " * 30).encode()  # > 127 bytes: a two-byte varint length
    return {
        "string/scalar": tf.constant(b"hello checkpoint"),
        "string/matrix": tf.constant(
            [[b"", b"a", "\u00e9t\u00e9 \u2603".encode()], [b"\x00nul\x00", long_text, b"z" * 127]]
        ),
        "string/empty_vector": tf.constant(np.zeros((0,), dtype="S1"), dtype=tf.string),
    }


def _read_back_with_tf(prefix: str) -> dict[str, np.ndarray]:
    """What TF itself reads from the checkpoint; bfloat16 becomes float32 (same values)."""
    reader = tf.train.load_checkpoint(prefix)
    values = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        value = reader.get_tensor(name)
        if dtype == tf.bfloat16:
            value = tf.cast(tf.constant(value, dtype=tf.bfloat16), tf.float32).numpy()
        values[name] = np.asarray(value)
    return values


def _assert_same(asked: np.ndarray, read: np.ndarray, name: str) -> None:
    assert asked.dtype == read.dtype and asked.shape == read.shape, (name, asked.dtype, read.dtype)
    if asked.dtype == object:
        assert asked.tolist() == read.tolist(), name
    else:
        assert asked.tobytes() == read.tobytes(), name


def write_dtypes_fixture(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    tensors = {**_numeric_tensors(rng), **_string_tensors()}
    directory = out / "dtypes"
    directory.mkdir(parents=True)
    prefix = str(directory / "ckpt")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tensors[name] for name in names],
    )

    read_back = _read_back_with_tf(prefix)
    assert sorted(read_back) == names, sorted(set(names) ^ set(read_back))
    numeric, strings = {}, {}
    for name, tensor in tensors.items():
        asked = tf.cast(tensor, tf.float32) if tensor.dtype == tf.bfloat16 else tensor
        asked = np.asarray(asked.numpy())  # a scalar string comes back as bare bytes
        _assert_same(asked, read_back[name], name)
        if tensor.dtype == tf.string:
            flat = asked.astype(object).reshape(-1)
            strings[name] = {"shape": list(asked.shape), "hex": [bytes(s).hex() for s in flat]}
        else:
            numeric[name] = asked
    # The stored dtype names, so that the tests can check dtype bookkeeping as well as values.
    tf_dtypes = {name: tensors[name].dtype.name for name in names}

    np.savez_compressed(out / "dtypes_expected.npz", **numeric)
    with open(out / "dtypes_expected_strings.json", "w") as f:
        json.dump({"strings": strings, "tf_dtypes": tf_dtypes}, f, indent=1, sort_keys=True)


def _graph_mode_save(directory: Path, build_variables, *, sharded: bool, num_cpus: int) -> dict:
    """Build variables in a TF1 graph, initialise them, save with Saver; return their values."""
    directory.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = build_variables()
        saver = tf.compat.v1.train.Saver(
            sharded=sharded, write_version=tf.compat.v1.train.SaverDef.V2, save_relative_paths=True
        )
        config = tf.compat.v1.ConfigProto(device_count={"CPU": num_cpus})
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(directory / "ckpt"), write_meta_graph=False)
            return {v.op.name: session.run(v) for v in variables}


def write_sharded_fixture(out: Path) -> None:
    rng = np.random.default_rng(SEED + 1)

    def build():
        variables = []
        for shard in range(3):
            with tf.device(f"/cpu:{shard}"):
                base = f"cell_{shard}/comb_iter_0/left"
                variables += [
                    tf.compat.v1.Variable(rng.normal(size=(3, 3, 8, 1)).astype(np.float32),
                                          name=f"{base}/separable_3x3_1/depthwise_weights"),
                    tf.compat.v1.Variable(rng.random(8).astype(np.float32),
                                          name=f"{base}/bn_sep_3x3_1/gamma"),
                ]
        with tf.device("/cpu:2"):
            variables.append(tf.compat.v1.Variable(np.int64(250000), name="global_step"))
        return variables

    values = _graph_mode_save(out / "sharded", build, sharded=True, num_cpus=3)
    data_files = sorted(p.name for p in (out / "sharded").glob("ckpt.data-*"))
    assert data_files == [f"ckpt.data-{i:05d}-of-00003" for i in range(3)], data_files
    read_back = _read_back_with_tf(str(out / "sharded" / "ckpt"))
    assert sorted(read_back) == sorted(values)
    for name, value in values.items():
        _assert_same(np.asarray(value), read_back[name], name)
    np.savez_compressed(out / "sharded_expected.npz", **values)


def write_sliced_fixture(out: Path) -> None:
    rng = np.random.default_rng(SEED + 2)

    def build():
        partitioned = tf.compat.v1.get_variable(
            "partitioned/weights",
            initializer=tf.constant(rng.normal(size=(6, 2)).astype(np.float32)),
            partitioner=tf.compat.v1.fixed_size_partitioner(2),
        )
        plain = tf.compat.v1.Variable(rng.normal(size=(2, 3)).astype(np.float32),
                                      name="plain/weights")
        return [plain] + list(partitioned)

    values = _graph_mode_save(out / "sliced", build, sharded=False, num_cpus=1)
    np.savez_compressed(out / "sliced_expected.npz", **{"plain/weights": values["plain/weights"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    write_dtypes_fixture(args.out)
    write_sharded_fixture(args.out)
    write_sliced_fixture(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total} bytes):")
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(args.out)}  {path.stat().st_size}")


if __name__ == "__main__":
    main()
