"""Run these tests on one torch thread: tiny tensors gain nothing from more, and the 2-core
development machine is shared."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
