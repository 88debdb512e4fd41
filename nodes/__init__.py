"""ComfyUI nodes of dit-cache (V3 schema) and the extension entry point.

The node list is built from the method registry (``cache_core/registry.py``): each method names its node
classes as ``"<module in nodes/>:<class>"``.
"""
from __future__ import annotations

import importlib

from comfy_api.latest import ComfyExtension, io

from ..cache_core.registry import methods


def _node_classes() -> list[type[io.ComfyNode]]:
    classes: list[type[io.ComfyNode]] = []
    for spec in methods().values():
        for ref in spec.nodes:
            module, name = ref.split(":")
            cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
            if cls not in classes:
                classes.append(cls)
    return classes


NODES: list[type[io.ComfyNode]] = _node_classes()


class DitCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DitCacheExtension:
    return DitCacheExtension()
