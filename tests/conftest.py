"""Shared by every test folder: ``tests/support`` on the import path (pytest.ini also sets it). Each folder's
own conftest.py loads what its tests need: the pack alone (core/, diffusers/) or with the host ComfyUI
(comfy/, server/, browser/, via support/comfy_fixtures.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine (another process using the
    cores) two-thread OpenMP barriers slow them down tenfold or more. Restored after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
