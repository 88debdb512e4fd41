"""pytest plugin (pytest.ini: ``-p pytest_root_dir``): collect the repository root as a plain folder.

The root holds the pack's ``__init__.py`` (ComfyUI's entry, with relative imports). pytest would collect the
root as a package and import that file under the checkout folder's name, which fails when the name is no
Python identifier (a git worktree such as ``wt-x``). The tests load the pack themselves (comfy_env.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path.resolve() == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
