"""Trained weights by default: `pnasnet classify`, `features`, `serve` and `train` without --weights
load the variant's published TF-Slim weights (downloaded once, cached, verified), `--weights none`
asks for random ones, and `create_model(name, pretrained=True)` is `weights="tf-slim"`.

Offline the default fails within seconds, naming the URL and the cache path, before any image is
read. The trained path is tested without the network and without the 350 MB Large release: a
release-format tarball for PNASNet-5 Mobile (a TF V2 checkpoint, `model.ckpt.index` +
`model.ckpt.data-00000-of-00001`, TF-Slim names, made here with numpy) is put into an empty
`PNASNET_HOME` under the registry's file name, and the default must find, verify and load it.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.cli import main
from pnasnet.model import PNASNet
from pnasnet.tasks import expand_inputs
from pnasnet.weights import sources
from pnasnet.weights.download import sha256_file
from pnasnet.weights.tf_checkpoint import TFCheckpoint
from pnasnet.weights.tf_slim_names import export_tf_slim_variables

from inference_images import write_small_crops  # noqa: E402
from test_tf_checkpoint_reader import _encode_table, _masked_crc, _varint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_model_thread")

MOBILE = "pnasnet5_mobile"
SIZE = "64"  # small inputs: the weights are what is tested, not the resolution


# ------------------------------------------------------------------ a TF V2 checkpoint, numpy only
# The index is written by the reader tests' table writer, which they check byte for byte against TF's.
def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}  # DT_FLOAT, DT_INT64


def write_tf_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """``PREFIX.index`` + ``PREFIX.data-00000-of-00001`` as TensorFlow's tensor-bundle writer lays
    them out (one shard, little-endian, version 1; uncompressed sorted table)."""
    data, pairs = bytearray(), [(b"", _varint_field(1, 1) + _bytes_field(3, _varint_field(1, 1)))]
    for name in sorted(tensors, key=lambda n: n.encode()):
        array = np.ascontiguousarray(tensors[name])
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        shape = b"".join(_bytes_field(2, _varint_field(1, d)) for d in array.shape)
        entry = (_varint_field(1, _DTYPES[array.dtype]) + _bytes_field(2, shape) + _varint_field(4, len(data))
                 + _varint_field(5, len(raw)) + _varint(6 << 3 | 5) + struct.pack("<I", _masked_crc(raw)))
        pairs.append((name.encode(), entry))
        data += raw
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
    index = _encode_table(pairs, per_block=len(pairs), restart_interval=1)
    prefix.with_name(prefix.name + ".index").write_bytes(index)


def _trained_looking_mobile() -> dict[str, np.ndarray]:
    """PNASNet-5 Mobile variables under TF-Slim names, unlike any seed's initialisation (moving
    statistics too), plus the release's `global_step`."""
    torch.manual_seed(1234)
    model = PNASNet(pnasnet.MOBILE, num_classes=1001)
    rng = np.random.default_rng(5)
    variables = export_tf_slim_variables(model)
    for name, value in variables.items():
        if name.endswith("moving_variance"):
            variables[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith(("moving_mean", "beta", "biases")):
            variables[name] = rng.normal(0, 0.1, value.shape).astype(np.float32)
    variables["global_step"] = np.array(2_000_000, np.int64)
    return variables


@pytest.fixture(scope="module")
def release_tarball(tmp_path_factory) -> Path:
    """A release-format `pnasnet-5_mobile_2017_12_13.tar.gz` (checkpoint files at the top level)."""
    folder = tmp_path_factory.mktemp("release")
    write_tf_checkpoint(folder / "model.ckpt", _trained_looking_mobile())
    with TFCheckpoint(folder / "model.ckpt") as checkpoint:  # the package's own reader accepts it
        assert checkpoint.read("global_step") == 2_000_000 and checkpoint.shape("conv0/weights") == (3, 3, 3, 32)
    source = sources.find_source(MOBILE, "tf-slim")
    tarball = folder / source.filename
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
            tar.add(folder / name, arcname=name)
    return tarball


@pytest.fixture
def offline_home(tmp_path, monkeypatch) -> Path:
    """An empty cache and no network, for this process and its children."""
    home = tmp_path / "home"
    monkeypatch.setenv("PNASNET_HOME", str(home))
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    return home


@pytest.fixture
def cached_release(offline_home, release_tarball, monkeypatch) -> Path:
    """The tarball in the (offline) cache under the registry's name: what a download leaves there."""
    source = sources.find_source(MOBILE, "tf-slim")
    offline_home.mkdir(parents=True, exist_ok=True)
    cached = offline_home / source.filename
    cached.write_bytes(release_tarball.read_bytes())
    if source.sha256 or source.sha256_prefix:
        # A published checksum would (rightly) refuse this stand-in: the registry entry is given the
        # stand-in's digest, so the same lookup-fetch-verify path runs on it.
        stand_in = dataclasses.replace(source, sha256=sha256_file(cached), sha256_prefix=None)
        monkeypatch.setattr(sources, "SOURCES", tuple(stand_in if s is source else s for s in sources.SOURCES))
    return cached


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return [str(p) for p in write_small_crops(tmp_path_factory.mktemp("crops"), 3, side=64)]


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _log_probabilities(out: str) -> np.ndarray:
    """``classify --json --top-k 1001`` lines as [images, 1001] log-probabilities in class order."""
    rows = []
    for line in out.splitlines():
        record = json.loads(line)
        assert record["error"] is None
        row = np.empty(1001)
        for item in record["top_k"]:
            row[item["index"]] = item["probability"]
        rows.append(np.log(row))
    return np.stack(rows)


def _api_log_probabilities(model, paths) -> np.ndarray:
    with torch.inference_mode():
        return torch.log_softmax(model.classify(pnasnet.load_images(paths, int(SIZE))).double(), 1).numpy()


# --------------------------------------------------------------------------------- offline: fail fast
def _assert_offline_failure(code: int, out: str, err: str, home: Path, model: str = MOBILE) -> None:
    source = sources.find_source(model, "tf-slim")
    assert code == 2, err
    assert err.startswith("pnasnet: error: ") and "Traceback" not in err, err
    assert source.url in err and str(home / source.filename) in err, err
    assert "--weights none" in err and "--weights PATH" in err  # the command-line ways out
    assert out == ""  # no header, no classification


def test_offline_classify_without_weights_fails_fast_before_reading_images(tmp_path, offline_home, images):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pnasnet", "classify", *images, str(broken), "--model", MOBILE],
                         capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    _assert_offline_failure(run.returncode, run.stdout, run.stderr, offline_home)
    assert "cannot read" not in run.stderr  # failed before any image was decoded
    assert seconds < 60, f"took {seconds:.1f} s"  # typically 2-4 s, mostly importing torch


def test_offline_default_is_the_large_release_for_the_default_model(capsys, offline_home, images):
    code, out, err = _run(capsys, "classify", *images)
    _assert_offline_failure(code, out, err, offline_home, model="pnasnet5_large")


def test_offline_features_and_train_fail_before_any_work(capsys, tmp_path, offline_home, images):
    out_file = tmp_path / "feats.parquet"
    code, out, err = _run(capsys, "features", *images, "--model", f"{MOBILE}_feature_vector", "--out", out_file)
    _assert_offline_failure(code, out, err, offline_home, model=f"{MOBILE}_feature_vector")
    assert not out_file.exists() and not Path(f"{out_file}.partial").exists()

    image_dir = tmp_path / "classes"
    for label in ("a", "b"):
        write_small_crops(image_dir / label, 2)
    model_dir = tmp_path / "model"
    code, out, err = _run(capsys, "train", image_dir, "--out", model_dir, "--model", MOBILE)
    _assert_offline_failure(code, out, err, offline_home)
    assert not model_dir.exists()


def test_offline_serve_fails_before_starting(offline_home):
    pytest.importorskip("litserve")
    from serve_server import free_port

    run = subprocess.run([sys.executable, "-m", "pnasnet", "serve", "--model", MOBILE, "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    _assert_offline_failure(run.returncode, run.stdout, run.stderr, offline_home)
    assert "pnasnet: serving" not in run.stderr


# ------------------------------------------------------------------ the default loads the cached release
def test_default_classify_loads_the_cached_tf_slim_release(capsys, cached_release, images):
    reference = pnasnet.create_model(MOBILE, weights=str(cached_release))
    common = [*images, "--model", MOBILE, "--image-size", SIZE, "--workers", "0", "--backend", "plain",
              "--json", "--top-k", "1001"]
    code, out, err = _run(capsys, "classify", *common)
    assert code == 0, err
    assert "downloading" not in err and "note:" not in err
    got = _log_probabilities(out)
    want = _api_log_probabilities(reference, images)
    # the same weights and the same plain model; only batch composition and the float64 softmax of
    # the CLI differ: log-probabilities within 1e-4 of the logit scale
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    # the file was verified and recorded by the download layer (trust on first use)
    recorded = json.loads((cached_release.parent / "checksums.json").read_text())["files"]
    assert recorded[cached_release.name]["sha256"] == sha256_file(cached_release)

    code, out, err = _run(capsys, "classify", *common, "--weights", "none")
    assert code == 0 and "note: --weights none: using random initialisation (seed 0)" in err
    random = _log_probabilities(out)
    torch.manual_seed(0)
    np.testing.assert_allclose(random, _api_log_probabilities(pnasnet.create_model(MOBILE), images),
                               rtol=0, atol=1e-4 * scale)
    assert np.abs(random - got).max() > 100 * 1e-4 * scale  # and not the trained model


def test_default_features_use_the_same_release_for_the_feature_vector_variant(capsys, tmp_path, cached_release,
                                                                              images):
    from inference_outputs import assert_same_vectors, read_output

    out_file = tmp_path / "feats.parquet"
    code, _, err = _run(capsys, "features", *images, "--model", f"{MOBILE}_feature_vector", "--image-size", SIZE,
                        "--workers", "0", "--backend", "plain", "--out", out_file, "-q")
    assert code == 0, err
    rows, meta = read_output(out_file)
    assert meta["weights"] == "tf-slim"
    reference = pnasnet.create_model(f"{MOBILE}_feature_vector", weights=str(cached_release))
    with torch.inference_mode():
        want = reference.features(pnasnet.load_images(images, int(SIZE))).numpy()
    for path, vector in zip(expand_inputs(images), want):
        assert_same_vectors(rows[path][0], vector)


def test_pretrained_true_is_weights_tf_slim(cached_release, tmp_path):
    pretrained = pnasnet.create_model(MOBILE, pretrained=True)
    named = pnasnet.create_model(MOBILE, weights="tf-slim", pretrained=True)  # consistent: accepted
    local = pnasnet.create_model(MOBILE, weights=str(cached_release))
    assert pretrained.weights_source == {"weights": "tf-slim", "path": str(cached_release), "kind": "tf-checkpoint"}
    for other in (named, local):
        for (key, a), (_, b) in zip(pretrained.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), key  # the same file through the same loader
    with pytest.raises(ValueError, match="pretrained=True"):
        pnasnet.create_model(MOBILE, weights="timm", pretrained=True)
    with pytest.raises(ValueError, match="'auto'"):
        pnasnet.create_model("auto", pretrained=True)
    with pytest.raises(TypeError, match="pretrained=True"):
        pnasnet.create_model(MOBILE, True)
    torch.manual_seed(0)
    random = pnasnet.create_model(MOBILE)  # without either: random, as before
    assert not torch.equal(random.conv0.weight, pretrained.conv0.weight)
    # a model directory keeps its own weights
    from pnasnet.weights.ours import save_safetensors

    save_safetensors(random, tmp_path / "model.safetensors", {})
    from_dir = pnasnet.create_model(str(tmp_path), pretrained=True)
    assert torch.equal(from_dir.conv0.weight, random.conv0.weight)


# --------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, words", [
    (["--model", "auto"], "--model auto takes its configuration from the weights: pass --weights PATH"),
    (["--model", "auto", "--weights", "none"], "--model auto takes its configuration from the weights"),
    (["--model", MOBILE, "--weights", "random"], "random initialisation is spelled --weights none"),
    (["--model", "no_such_model"], "unknown model 'no_such_model'"),
])
@pytest.mark.parametrize("command", ["classify", "serve", "train"])
def test_weights_usage_errors_exit_2(capsys, tmp_path, offline_home, images, command, args, words):
    inputs = {"classify": images, "serve": [], "train": [tmp_path, "--out", tmp_path / "model"]}[command]
    code, out, err = _run(capsys, command, *inputs, *args)
    assert code == 2 and err.startswith("pnasnet: error: ") and words in err, err
    assert not offline_home.exists()  # nothing was fetched


def test_none_with_a_model_directory_and_a_variant_without_a_source(capsys, tmp_path, offline_home, images,
                                                                   monkeypatch):
    from pnasnet.weights.ours import save_safetensors

    save_safetensors(pnasnet.create_model(MOBILE), tmp_path / "model.safetensors", {})
    code, _, err = _run(capsys, "classify", *images, "--model", tmp_path, "--weights", "none")
    assert code == 2 and "has its own trained weights" in err
    monkeypatch.setattr(sources, "sources_for", lambda model: [])
    code, _, err = _run(capsys, "classify", *images, "--model", MOBILE)
    assert code == 2 and f"no published weights are known for {MOBILE}" in err
    assert "--weights PATH" in err and "--weights none" in err


def test_info_keeps_random_weights(capsys, offline_home):
    code, out, _ = _run(capsys, "info", MOBILE, "--image-size", SIZE)
    assert code == 0 and json.loads(out)["weights"] == "random initialisation"
    assert not offline_home.exists()


def test_help_documents_the_default_and_none(capsys):
    for command in ("classify", "features", "serve", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "'none' = random" in text and "TF-Slim weights" in text, command
