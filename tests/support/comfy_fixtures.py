"""Fixtures of the tests that run the host ComfyUI (tests/comfy, tests/server, tests/browser): ComfyUI as a
library (CPU) and this pack imported as ``dit_cache`` with its nodes. Each of those folders' conftest.py
imports this module's names."""
from __future__ import annotations

import pytest

import comfy_env

comfy_env.setup_comfy()
PACK = comfy_env.load_pack()


@pytest.fixture(scope="session")
def pack():
    return PACK


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
