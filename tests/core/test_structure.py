"""The pack's structure: the core imports neither ComfyUI nor diffusers, no module imports another in a cycle,
and the folders import each other in one direction only (nodes -> hosts -> cache_core).

Imports are read from the source (every ``import`` and ``from ... import``, at module level or inside functions),
so a cycle hidden by an import inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cache_core", "hosts", "nodes")
HOST_LIBRARIES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                  "execution", "diffusers")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(pack modules, outside top-level names) that module ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            outside.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                outside.add((node.module or "").split(".")[0])
                continue
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *([node.module] if node.module else [])])
            inside.add(target)
            inside.update(f"{target}.{a.name}" for a in node.names)  # "from . import x" imports module x
    return inside, outside


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    graph, outside = {}, {}
    for name, path in modules.items():
        inside, out = _imports(name, path)
        graph[name] = {m for m in inside if m in modules and m != name}
        outside[name] = out
    return graph, outside


def test_core_imports_neither_comfyui_nor_diffusers():
    graph, outside = _graph()
    for name, libs in outside.items():
        if name.startswith("cache_core"):
            assert not libs & set(HOST_LIBRARIES), f"{name} imports {sorted(libs & set(HOST_LIBRARIES))}"
            assert all(m.startswith("cache_core") for m in graph[name]), f"{name} imports {graph[name]}"


def test_folders_import_one_way():
    order = {"cache_core": 0, "hosts": 1, "nodes": 2}
    graph, _ = _graph()
    for name, targets in graph.items():
        for t in targets:
            assert order[t.split(".")[0]] <= order[name.split(".")[0]], f"{name} imports {t}"
    # hosts beside each other: the diffusers host never imports the ComfyUI host and back
    for name, targets in graph.items():
        if name.startswith("hosts.diffusers"):
            assert not any(t.startswith("hosts.comfy") for t in targets), name
        if name.startswith("hosts.comfy"):
            assert not any(t.startswith("hosts.diffusers") for t in targets), name


def test_no_import_cycles():
    graph, _ = _graph()
    # a package's __init__ importing its own submodules is how a package is built, not a cycle
    edges = {m: {t for t in ts if not (m == t.rpartition(".")[0] or t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
