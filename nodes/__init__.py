"""ComfyUI nodes of dit-cache (V3 schema) and the extension entry point."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .adaptive_node import ApplyAdaptiveCache
from .dbcache_node import ApplyDBCache
from .fastercache_node import ApplyFasterCache
from .fbc_node import ApplyFirstBlockCache
from .magcache_nodes import ApplyMagCache, MagCacheCalibrate
from .pab_node import PABConfigNode
from .smoothcache_nodes import ApplySmoothCache, SmoothCacheCalibrate
from .taylorseer_node import ApplyTaylorSeer
from .teacache_node import ApplyTeaCache

NODES: list[type[io.ComfyNode]] = [ApplyFirstBlockCache, ApplyMagCache, MagCacheCalibrate, ApplyTeaCache,
                                   ApplyDBCache, ApplyTaylorSeer, ApplyAdaptiveCache, PABConfigNode, ApplyFasterCache,
                                   SmoothCacheCalibrate, ApplySmoothCache]


class DitCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DitCacheExtension:
    return DitCacheExtension()
