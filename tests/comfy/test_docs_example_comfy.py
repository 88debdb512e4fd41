"""docs/development.md's worked example ("ToyCache": two new files and one registry entry) works as written:
its two code blocks, loaded as the pack modules they name, register a method whose node runs through ComfyUI's
real sampler and decides exactly as First Block Cache (ToyCache is FBC without its extras)."""
from __future__ import annotations

import re
import sys
import types

import pytest
import torch

import tiny_models
from comfy_env import REPO
from sampling import ksample

from dit_cache.cache_core import registry
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.fbc_node import ApplyFirstBlockCache

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = {"cache_core/methods/toycache.py": "dit_cache.cache_core.methods.toycache",
           "nodes/toycache_node.py": "dit_cache.nodes.toycache_node"}


def _blocks() -> dict[str, str]:
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    found = {}
    for code in re.findall(r"```python\n(.*?)```", text, re.S):
        first = code.splitlines()[0].lstrip("# ").strip()
        if first in MODULES:
            found[first] = code
    assert set(found) == set(MODULES), f"docs/development.md lacks {set(MODULES) - set(found)}"
    return found


@pytest.fixture()
def toycache():
    loaded = []
    try:
        for path, code in _blocks().items():
            name = MODULES[path]
            module = types.ModuleType(name)
            module.__package__ = name.rpartition(".")[0]
            module.__file__ = str(REPO / path)
            sys.modules[name] = module
            loaded.append(name)
            exec(compile(code, str(REPO / path), "exec"), module.__dict__)
        yield sys.modules[MODULES["nodes/toycache_node.py"]]
    finally:
        for name in loaded:
            sys.modules.pop(name, None)
        registry._METHODS.pop("toycache", None)
        registry._MODULES.pop("toycache", None)


def test_worked_example_registers_and_runs_as_first_block_cache(toycache):
    spec = registry._METHODS["toycache"]
    assert spec.nodes == ("toycache_node:ApplyToyCache",) and spec.hosts == ("comfy", "diffusers")
    tiny = tiny_models.build("flux")
    window = {"start_percent": 0.0, "end_percent": 1.0, "max_consecutive_skips": -1, "warmup_steps": 0}
    out_toy = ksample(toycache.ApplyToyCache.execute(tiny.patcher, threshold=0.2, **window).result[0], tiny)
    toy = run_log.last()
    out_fbc = ksample(ApplyFirstBlockCache.execute(tiny.patcher, threshold=0.2, **window).result[0], tiny)
    fbc = run_log.last()
    assert toy["node"] == "Apply ToyCache" and toy["method"] == "ToyCache"
    assert 0 < toy["skipped_calls"] < toy["calls"]
    assert [r["skipped"] for r in toy["records"]] == [r["skipped"] for r in fbc["records"]]
    assert torch.equal(out_toy, out_fbc)
    assert toycache.ApplyToyCache.execute(tiny.patcher, threshold=0.0, **window).result[0] is tiny.patcher
