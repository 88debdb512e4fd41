"""Every registered method is complete: it has a support-matrix entry, a benchmark sweep entry, a section in the
node docs and an example workflow, and its node classes exist. Their settings stay where they are (the matrix,
the sweep, the docs); this checks they exist, so forgetting one fails here.

Read from the sources and files only: no ComfyUI needed.
"""
from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

from dit_cache.cache_core import registry

REPO = Path(__file__).resolve().parents[2]


def _import(folder: Path, name: str):
    """Module ``name`` of ``folder`` (tests/support is on pytest's path; bench/ is added for the import)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def _node_ids(ref: str) -> str:
    """The ComfyUI node id of ``"<module>:<class>"`` in nodes/, read from its schema's ``node_id=``."""
    module, cls = ref.split(":")
    tree = ast.parse((REPO / "nodes" / f"{module}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for call in ast.walk(node):
                if isinstance(call, ast.keyword) and call.arg == "node_id" and isinstance(call.value, ast.Constant):
                    return call.value.value
            raise AssertionError(f"{ref}: no node_id in its schema")
    raise AssertionError(f"{ref}: no class {cls} in nodes/{module}.py")


METHODS = registry.methods()

# Methods that reuse work across sampling runs (MethodSpec.scope "prompts": the Prompt Cache, Nirvana) skip
# nothing in a single run, which is what the support matrix (aggressive must skip a call, disabled must be
# bit-identical) and the knob sweep (skips vs. PSNR of one run) measure. They have no entry there; instead each
# names its own benchmark, a stream of prompts replayed through its node.
CROSS_RUN_BENCH = {"promptcache": "bench/prompt_cache.py"}


def test_the_registry_holds_every_method_module():
    modules = {p.stem for p in (REPO / "cache_core" / "methods").glob("*.py")} - {"__init__"}
    registering = {registry.module_of(k).rpartition(".")[2] for k in METHODS}
    helpers = {m for m in modules if m.endswith(("_calibration", "_signals"))}  # a method's own helper modules
    assert registering == modules - helpers
    assert len(METHODS) >= 9


@pytest.mark.parametrize("key", sorted(METHODS))
def test_method_is_complete(key):
    spec = METHODS[key]
    node_ids = [_node_ids(ref) for ref in spec.nodes]
    assert node_ids, f"{key}: no ComfyUI node"

    matrix = _import(REPO / "tests" / "support", "methods_registry")
    sweep = _import(REPO / "bench", "sweep_methods")
    if spec.scope == "chooser":  # picks another method (DiT Cache Tune, the start-here node): nothing to sweep
        assert key not in matrix.METHODS and key not in sweep.BY_KEY, f"{key}: single-run checks do not apply"
    elif spec.scope == "prompts":
        assert key in CROSS_RUN_BENCH and (REPO / CROSS_RUN_BENCH[key]).is_file(), f"{key}: no benchmark script"
        assert key not in matrix.METHODS and key not in sweep.BY_KEY, f"{key}: single-run checks do not apply"
    else:
        assert key in matrix.METHODS, f"{key}: no support-matrix entry in tests/support/methods_registry.py"
        assert matrix.METHODS[key].node_id in node_ids
        assert key in sweep.BY_KEY, f"{key}: no benchmark entry in bench/sweep_methods.py"
        assert sweep.BY_KEY[key].node_id in node_ids

    docs = (REPO / "docs" / "nodes.md").read_text(encoding="utf-8")
    headings = [line for line in docs.splitlines() if line.startswith("#")]
    for node_id in node_ids:
        assert any(f"`{node_id}`" in h for h in headings), f"{key}: docs/nodes.md has no section for {node_id}"

    used = set()
    for path in (REPO / "workflows").glob("*.json"):
        used.update(n.get("type") for n in json.loads(path.read_text(encoding="utf-8")).get("nodes", []))
    assert used & set(node_ids), f"{key}: no example workflow in workflows/ uses {node_ids}"


def test_registry_refuses_a_second_method_with_the_same_key():
    spec = METHODS["fbc"]
    clash = registry.MethodSpec(key="fbc", label="other", config=dict, policy=dict)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(clash)
    assert registry.methods()["fbc"] is spec
