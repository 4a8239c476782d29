"""`pnasnet serve` options, refused before anything starts; the core library never imports the
serving stack."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from pnasnet.cli import main


def test_help_lists_the_limits(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--max-batch-size", "--max-wait-ms", "--max-queue", "--timeout", "--max-body-bytes",
                   "--max-pixels", "--api-key-file", "--graceful-timeout", "--engine", "--replicas",
                   "--cpus-per-replica", "--gpus-per-replica", "--address", "--model-name"):
        assert option in text


@pytest.mark.parametrize("args, words", [
    (["--max-batch-size", "0"], "--max-batch-size must be positive"),
    (["--max-wait-ms", "5000", "--timeout", "1"], "--max-wait-ms must be shorter than --timeout"),
    (["--max-queue", "-1"], "--max-queue must be positive"),
    (["--model", "no_such_model", "--weights", "missing.ckpt"], "missing.ckpt"),
    (["--backend", "plain", "--precision", "bfloat16"], "--backend plain --precision bfloat16: the plain model runs"),
    (["--precision", "int8"], "--precision int8 needs --calibration PATH"),
    (["--calibration", "photos/"], "--calibration is for --precision int8"),
    (["--model-name", "a/b"], "--model-name must be a non-empty name without /"),
    pytest.param(["--engine", "ray", "--replicas", "3:2"], "--replicas must be N or MIN:MAX with 1 <= MIN <= MAX",
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs pnasnet[ray]")),
    pytest.param(["--engine", "ray", "--replicas", "two"], "--replicas must be N or MIN:MAX",
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs pnasnet[ray]")),
    pytest.param(["--engine", "ray", "--cpus-per-replica", "-1"], "--cpus-per-replica must be >= 0",
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs pnasnet[ray]")),
])
def test_bad_options_exit_2_before_starting(capsys, args, words):
    assert main(["serve", *args]) == 2
    assert words in capsys.readouterr().err


def test_litserve_refuses_other_hosts_and_low_ports(capsys):
    pytest.importorskip("litserve")
    assert main(["serve", "--host", "10.1.2.3"]) == 2
    assert "--host must be one of 127.0.0.1, 0.0.0.0, ::" in capsys.readouterr().err
    assert main(["serve", "--port", "80"]) == 2
    assert "--port must be 1024 or above" in capsys.readouterr().err


def test_empty_api_key_file_is_refused(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("\n")
    assert main(["serve", "--api-key-file", str(key)]) == 2
    assert "the API key file is empty" in capsys.readouterr().err


def test_the_core_library_does_not_import_the_serving_stack():
    code = ("import sys, pnasnet, pnasnet.cli, pnasnet.serve; pnasnet.cli.build_parser(); "
            "print(sorted(m for m in ('litserve', 'fastapi', 'starlette', 'uvicorn', 'prometheus_client', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("openvino", "nncf", "onnx", "onnxscript")),
                    reason="int8 needs pnasnet[int8] (openvino, nncf)")
@pytest.mark.cpu_dependent
def test_an_int8_worker_calibrates_on_the_given_images(tmp_path):
    from inference_images import write_small_crops
    from serve_server import TINY_CHECKPOINT

    from pnasnet.serve.settings import ServeSettings, load_model, prepare_served_model

    write_small_crops(tmp_path, 6, side=64)
    settings = ServeSettings(model="auto", weights=str(TINY_CHECKPOINT), image_size=48, precision="int8",
                             calibration=(str(tmp_path),), calibration_count=4)
    settings.check()
    served = prepare_served_model(load_model(settings), settings)
    assert (served.backend, served.precision, served.image_size) == ("openvino", "int8", 48)
    assert served.classify(torch.rand(2, 3, 48, 48)).shape == (2, 11)
