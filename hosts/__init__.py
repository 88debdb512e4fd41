"""The hosts that drive the caching core: ComfyUI (``hosts.comfy``) and diffusers (``hosts.diffusers``).

Each host imports ``cache_core``; the core never imports a host.
"""
