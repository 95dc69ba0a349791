"""Shared test settings and fixtures.

No progress bars anywhere under test: the engine reads $CAIT_EDU_NO_PROGRESS, and notebook kernels
started by nbval inherit it.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ["CAIT_EDU_NO_PROGRESS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import write_fake_cifar  # noqa: E402


@pytest.fixture
def one_thread():
    """One intra-op thread, as the training subprocesses use (see _train_helpers.env), so runs that
    are compared bit for bit use the same thread count; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A fake CIFAR-10 file in the offline format: 128 train / 64 test learnable images."""
    return write_fake_cifar(tmp_path_factory.mktemp("fakecifar"))
