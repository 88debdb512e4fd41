"""dit-cache: caching for diffusion transformers in ComfyUI.

ComfyUI loads this folder from ``custom_nodes/``: ``comfy_entrypoint`` returns the V3 extension with the
nodes, ``WEB_DIRECTORY`` the front-end scripts. The caching core (``cache_core``) does not import ComfyUI.
"""
from .nodes import comfy_entrypoint

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY", "__version__"]
