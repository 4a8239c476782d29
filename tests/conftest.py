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
