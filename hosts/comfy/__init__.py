"""The ComfyUI host: clone + keyed wrappers + block patches (``patch``), the CFG uncond rebuild wrapper
(``uncond``), the page's routes and live events (``stats_server``) and the in-memory run history (``run_log``)."""
