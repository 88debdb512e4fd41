"""Warnings the user must see (unsupported model, a method that does not apply, a calibration that does not
match the run): one function, :func:`warn`, that logs the warning and hands it to every registered sink.

The ComfyUI host registers a sink (``hosts/comfy/stats_server.py``) that sends it to the page that queued the
prompt as the websocket event ``dit-cache.warning``; the page shows a toast, a line on the node and one in the
"DiT Cache" tab. Without a host sink (diffusers, in-process tests) a warning is only logged.

Which node says it: the caller names it (``node`` label and graph ``node_id``) or, inside a sampling run, the
host sets the run's cache node with :func:`running` (a context variable), so code that only knows its policy
(``cache_core/methods``) is attributed to the node that attached it. Messages are plain text the caller has
already escaped (values from prompts and file names through ``cache_core/text.py``).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Callable, Iterator

log = logging.getLogger("dit_cache")

Sink = Callable[[str, "str | None", str], None]  # (node label, node graph id or None, message)

_sinks: list[Sink] = []
_running: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar("dit_cache_node",
                                                                                         default=None)


def add_sink(sink: Sink) -> None:
    """Also hand every warning to ``sink`` (idempotent)."""
    if sink not in _sinks:
        _sinks.append(sink)


@contextlib.contextmanager
def running(node: str, node_id: str | None) -> Iterator[None]:
    """Within this block, warnings that name no node are the cache node ``node`` (graph id ``node_id``)'s."""
    token = _running.set((node, node_id))
    try:
        yield
    finally:
        _running.reset(token)


def warn(message: str, node: str | None = None, node_id: str | None = None) -> None:
    """Log ``[dit-cache] <node>: <message>`` as a warning and hand it to the sinks (a sink's failure is logged,
    never raised: a warning must not fail a run)."""
    current = _running.get()
    if node is None and current is not None:
        node, node_id = current[0], current[1] if node_id is None else node_id
    label = node or "dit-cache"
    log.warning("[dit-cache] %s: %s", label, message)
    for sink in list(_sinks):
        try:
            sink(label, node_id, message)
        except Exception:
            log.debug("[dit-cache] a warning sink failed", exc_info=True)
