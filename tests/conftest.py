"""Test set-up: the host ComfyUI as a library (CPU) and this pack imported as ``dit_cache``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import comfy_env  # noqa: E402

comfy_env.setup_comfy()
PACK = comfy_env.load_pack()


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine (another process using the
    cores) two-thread OpenMP barriers slow them down tenfold or more. Restored after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _clear_run_log():
    PACK.hosts.comfy.run_log.clear()
    yield


@pytest.fixture()
def store(tmp_path):
    """Calibrations (MagCache, SmoothCache) go to a temporary folder placed first in folder_paths' "magcache"
    entry; removed from it afterwards."""
    import folder_paths

    calibration_store = PACK.nodes.calibration_store
    calibration_store.register()
    paths = folder_paths.folder_names_and_paths[calibration_store.FOLDER][0]
    paths.insert(0, str(tmp_path))
    yield tmp_path
    paths.remove(str(tmp_path))
