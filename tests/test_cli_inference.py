"""`pnasnet classify` and `pnasnet features`: output styles, exit statuses, agreement with the API,
and resuming after a real SIGKILL. Runs in-process where it can (no torch import per call)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.cli import main
from pnasnet.data import decode_top_k, load_images
from pnasnet.tasks import expand_inputs, iter_features

import skimage  # noqa: F401  (a test dependency: real photographs)
import pyarrow  # noqa: F401
from inference_images import write_mixed_folder, write_photos, write_small_crops  # noqa: E402
from inference_outputs import assert_same_vectors, read_output  # noqa: E402

SMALL = ["--model", "pnasnet5_mobile", "--weights", "none", "--image-size", "64", "--workers", "0"]


pytestmark = pytest.mark.usefixtures("one_model_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # what the CLI does with --weights none (--seed 0)
    return pnasnet.create_model("pnasnet5_mobile")


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _logit_scale(model, paths) -> float:
    with torch.inference_mode():
        return float(model.classify(load_images(paths, 64)).abs().max())


def _expected_top_k(model, paths, k):
    with torch.inference_mode():
        return decode_top_k(model.classify(load_images(paths, 64)), k)


# ----------------------------------------------------------------------------------- classify
def test_classify_json_lines_carry_the_top_k_labels(capsys, photo_dir, model):
    code, out, err = _run(capsys, "classify", photo_dir, *SMALL, "--top-k", 3, "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    paths = expand_inputs([photo_dir])
    assert [r["path"] for r in records] == paths
    for record, expected in zip(records, _expected_top_k(model, paths, 3)):
        assert record["error"] is None
        assert [(t["index"], t["label"]) for t in record["top_k"]] == [(i, label) for i, label, _ in expected]
        # the default back end is the exact inference form: logits within 1e-4 of their scale, so
        # log-probabilities within twice that
        np.testing.assert_allclose(np.log([t["probability"] for t in record["top_k"]]),
                                   np.log([p for *_, p in expected]), rtol=0, atol=2e-4 * _logit_scale(model, paths))
    assert "note: --weights none: using random initialisation (seed 0)" in err


def test_classify_csv_and_table(capsys, photo_dir, model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    paths = expand_inputs([photo_dir])
    code, out, err = _run(capsys, "classify", photo_dir, bad, *SMALL, "--csv", "-q")
    assert code == 1 and f"cannot read {bad}" in err and "note: --weights none" not in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "rank", "index", "label", "probability", "error"]
    assert [r["path"] for r in rows] == [p for p in paths for _ in range(5)] + [str(bad)]
    assert rows[-1]["error"] and not rows[-1]["label"]
    expected = _expected_top_k(model, paths, 5)
    assert [r["label"] for r in rows[:-1]] == [label for top in expected for _, label, _ in top]

    code, out, err = _run(capsys, "classify", photo_dir, bad, *SMALL, "--top-k", 2)
    lines = out.splitlines()
    assert code == 1 and lines[0].split() == ["PATH", "#", "PROB", "CLASS"]
    first_label = expected[0][0][1]
    assert lines[1].startswith(paths[0]) and f"{first_label} ({expected[0][0][0]})" in lines[1]
    assert lines[2].split()[0] == "2" and lines[-1].startswith(str(bad)) and "ERROR:" in lines[-1]
    assert len(lines) == 1 + 2 * len(paths) + 1


@pytest.mark.parametrize("args", [
    ["classify", "{empty}", *SMALL],                           # no images found
    ["classify", "{photos}", *SMALL, "--top-k", "0"],
    ["classify", "{photos}", "--model", "pnasnet5_mobile_feature_vector", "--weights", "none", "--workers", "0"],
    ["features", "{photos}", *SMALL, "--out", "{tmp}/feats.csv"],  # unknown output format
    ["features", "{photos}", *SMALL, "--out", "{tmp}/f.npy", "--backend", "plain", "--precision", "bfloat16"],
    ["classify", "{photos}", *SMALL, "--backend", "onnxruntime", "--precision", "bfloat16"],
    ["classify", "{photos}", *SMALL, "--precision", "int8"],                  # no calibration images
    ["classify", "{photos}", *SMALL, "--calibration", "{photos}"],            # calibration without int8
])
def test_usage_errors_exit_2(capsys, tmp_path, photo_dir, args):
    (tmp_path / "empty").mkdir()
    fill = dict(empty=tmp_path / "empty", photos=photo_dir, tmp=tmp_path)
    code, _, err = _run(capsys, *[a.format(**fill) for a in args])
    assert code == 2 and "pnasnet: error:" in err
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(photo_dir), "--json", "--csv"])
    assert exited.value.code == 2


def test_a_model_directory_brings_its_transform_and_image_size(capsys, tmp_path, photo_dir, model):
    from pnasnet.weights.ours import save_safetensors

    folder = tmp_path / "my_model"
    folder.mkdir()
    # what `pnasnet train --transform resize` records (trained at 72 px)
    save_safetensors(model, folder / "model.safetensors", {"transform": "resize", "image_size": "72"})
    code, out, err = _run(capsys, "classify", photo_dir, "--model", folder, "--workers", "0", "--json",
                          "--backend", "plain", "--top-k", "1")
    assert code == 0, err
    paths = expand_inputs([photo_dir])
    got = [json.loads(line)["top_k"][0]["probability"] for line in out.splitlines()]
    with torch.inference_mode():
        want = torch.softmax(model.classify(load_images(paths, 72, transform="resize")).double(), 1).max(1).values
        other = torch.softmax(model.classify(load_images(paths, 64)).double(), 1).max(1).values
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
    assert not np.allclose(got, other.numpy(), rtol=1e-5)  # the defaults would have given something else


# ----------------------------------------------------------------------------------- features
def test_features_cli_equals_api_and_reports_every_bad_file(capsys, tmp_path, model):
    good, bad = write_mixed_folder(tmp_path / "in")
    out = tmp_path / "feats.parquet"
    code, _, err = _run(capsys, "features", tmp_path / "in", *SMALL, "--out", out, "--batch-size", 4)
    assert code == 1
    for path in bad:
        assert f"cannot read {path}: " in err
    assert f"{len(good)} of {len(good) + len(bad)} vectors" in err
    rows, meta = read_output(out)
    assert meta["weights"] == "random initialisation (seed 0)" and meta["model"] == "pnasnet5_mobile"
    api = {r.path: r for r in iter_features(model, [str(p) for p in good], image_size=64, batch_size=4, workers=0,
                                            backend="plain")}  # the CLI runs the inference form
    for path in good:
        assert_same_vectors(rows[str(path)][0], api[str(path)].vector)
    assert {p for p, (v, e) in rows.items() if e} == {str(p) for p in bad}
    # the same command again: nothing to compute, same file; another seed is refused
    code, _, err = _run(capsys, "features", tmp_path / "in", *SMALL, "--out", out, "-q")
    assert code == 1 and read_output(out)[0].keys() == rows.keys()
    code, _, err = _run(capsys, "features", tmp_path / "in", *SMALL, "--out", out, "--seed", 1)
    assert code == 2 and "made by another run" in err


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("openvino", "nncf", "onnx", "onnxscript")),
                    reason="int8 needs pnasnet[int8] (openvino, nncf)")
@pytest.mark.cpu_dependent
def test_int8_on_request_with_calibration_images(capsys, tmp_path, photo_dir, model):
    out = tmp_path / "f.parquet"
    code, _, err = _run(capsys, "features", photo_dir, *SMALL, "--out", out, "--precision", "int8",
                        "--calibration", photo_dir, "--calibration-count", 3, "-q")
    assert code == 0, err
    rows, meta = read_output(out)
    assert meta["precision"] == "int8"
    paths = expand_inputs([photo_dir])
    got = np.stack([rows[p][0] for p in paths])
    with torch.inference_mode():
        want = model.features(load_images(paths, 64)).numpy()
    assert np.abs(got - want).max() > 1e-4 * np.abs(want).max()  # quantized, not the float32 function
    assert np.abs(got - want).max() < 0.5 * np.abs(want).max()   # yet the same network
    # a float32 run may not resume into it
    code, _, err = _run(capsys, "features", photo_dir, *SMALL, "--out", out, "-q")
    assert code == 2 and "precision" in err


def test_features_resume_after_sigkill(capsys, tmp_path):
    images = write_small_crops(tmp_path / "in", 60)
    out = tmp_path / "feats.npy"
    args = ["features", str(tmp_path / "in"), "--out", str(out), "--model", "pnasnet5_mobile", "--weights", "none",
            "--image-size", "64", "--batch-size", "1", "--chunk-size", "2", "--workers", "1", "--threads", "1"]
    # a session of its own, so the kill reaches the decoding worker too and nothing is left behind
    run = subprocess.Popen([sys.executable, "-m", "pnasnet", *args, "-q"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, start_new_session=True)
    chunks = Path(f"{out}.partial")
    try:
        deadline = time.monotonic() + 120
        while not list(chunks.glob("chunk-*.npz")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, f"finished or failed before it could be killed: {run.stderr.read()!r}"
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        run.stderr.close()
    assert run.returncode == -signal.SIGKILL and not out.exists()
    saved = len(list(chunks.glob("chunk-*.npz")))
    assert 1 <= saved < 30

    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert "from an earlier run" in err
    code, _, err = _run(capsys, *[a if a != str(out) else str(tmp_path / "ref.npy") for a in args])
    assert code == 0
    rows, _ = read_output(out)
    reference, _ = read_output(tmp_path / "ref.npy")
    assert list(rows) == list(reference) == [str(p) for p in images]
    for path, (vector, error) in rows.items():
        assert error is None
        assert_same_vectors(vector, reference[path][0])
    assert not chunks.exists()
