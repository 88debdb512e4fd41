"""Import the test host's ComfyUI as a library (CPU mode) and load this pack as the package ``dit_cache``."""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
# the host ComfyUI tree: .host/ComfyUI (0.3.75), or the one DITCACHE_COMFYUI names (scripts/test_host_080.sh:
# .host080/ComfyUI, ComfyUI 0.8.0)
COMFY_DIR = Path(os.environ.get("DITCACHE_COMFYUI", REPO / ".host" / "ComfyUI"))
# DITCACHE_COMPAT=1: a compatibility run on a second host; tests/comfy/test_matrix.py runs a covering subset
COMPAT = os.environ.get("DITCACHE_COMPAT") == "1"


def setup_comfy(cpu: bool = True) -> None:
    """Put ComfyUI on sys.path and (``cpu``) switch it to CPU before anything imports comfy.model_management."""
    if not (COMFY_DIR / "main.py").exists():
        raise RuntimeError(f"ComfyUI not found at {COMFY_DIR}: run scripts/setup_host.sh (make test does)")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu
    logging.getLogger().setLevel(logging.INFO)


def load_pack(name: str = "dit_cache", with_comfy: bool = True) -> ModuleType:
    """Import the pack from the repository root the way ComfyUI does, under an importable name. Without
    ``with_comfy`` ComfyUI is not put on the path, and the pack imports without its nodes (its core and the
    diffusers host work without ComfyUI)."""
    if name in sys.modules:
        module = sys.modules[name]
        if with_comfy and not hasattr(module, "comfy_entrypoint"):
            # loaded without ComfyUI earlier in this session (a core/diffusers test ran first): add the nodes
            setup_comfy()
            module.comfy_entrypoint = importlib.import_module(f"{name}.nodes").comfy_entrypoint
        return module
    if with_comfy:
        setup_comfy()
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
