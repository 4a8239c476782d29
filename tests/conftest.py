"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_model_thread():
    """One model thread for a module's tests: on a shared 2-core machine, two OpenMP threads stall
    whenever another job takes a core, which made model-heavy tests ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def test_session_environment(tmp_path_factory):
    """- Every test (and every command a test starts) caches under its own folder, never the user's:
      weights downloads and the converted OpenVINO graphs that backend "auto" keeps (PNASNET_HOME).
    - backend "auto" does not pick OpenVINO (PNASNET_AUTO_OPENVINO=off) in the tests of the commands,
      the server and the tasks: on x86 with OpenVINO installed auto would convert every distinct test
      model for OpenVINO (several seconds each; the suite then takes over an hour). What auto picks,
      and the OpenVINO path it runs, including through the `features` command, are tested in
      test_auto_backend.py, which removes this setting."""
    import os

    saved = {name: os.environ.get(name) for name in ("PNASNET_HOME", "PNASNET_AUTO_OPENVINO")}
    os.environ["PNASNET_HOME"] = str(tmp_path_factory.mktemp("pnasnet-home"))
    os.environ["PNASNET_AUTO_OPENVINO"] = "off"
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
