"""Fixtures shared by the mer tests."""

import pytest


@pytest.fixture
def one_thread():
    """torch on one thread in this process (what each worker/rank gets on a 2-core machine), so serial
    and parallel runs do the same arithmetic."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
