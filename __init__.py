"""dit-cache: caching for diffusion transformers in ComfyUI (and diffusers).

ComfyUI loads this folder from ``custom_nodes/``: ``comfy_entrypoint`` returns the V3 extension with the
nodes, ``WEB_DIRECTORY`` the front-end scripts. The caching core (``cache_core``) and the diffusers host
(``hosts.diffusers``) import nothing of ComfyUI: outside ComfyUI the package imports without its nodes.
"""
import importlib.util

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"
__all__ = ["WEB_DIRECTORY", "__version__"]

if importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI (or with it on the path)
    from .nodes import comfy_entrypoint

    __all__.append("comfy_entrypoint")
