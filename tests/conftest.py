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


@pytest.fixture(autouse=True)
def _clear_run_log():
    PACK.nodes.run_log.clear()
    yield
