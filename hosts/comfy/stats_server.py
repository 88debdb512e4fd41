"""The statistics panel's server side: push each run's statistics to the page that queued it, serve recent runs.

- ``publish(run)`` (called by ``comfy_host`` at the end of every sampling run) keeps the run in ``run_log`` with
  the running prompt's client id and sends it to the page that queued the prompt as the websocket event
  ``dit-cache.run`` (``PromptServer.instance.send_sync(event, data, sid=client_id)``).
- ``publish_step(...)`` sends one model call's decisions as ``dit-cache.step`` while sampling runs (live view).
  ``send_sync`` only puts the message on the server loop's queue (``loop.call_soon_threadsafe``), a few
  microseconds next to a model call.
- ``send_warning(node, node_id, message)`` (the sink of ``cache_core.feedback.warn``, registered at import) keeps a
  user-facing warning in ``run_log`` as ``{"method": "warning", "node_id": ..., "warning": {...}}`` and sends it
  as ``dit-cache.warning``, once per prompt, node and message.
- ``GET /dit-cache/runs?client_id=<id>[&limit=N]`` returns ``{"runs": [...], "max_runs": M, "max_bytes": B}``:
  the kept runs of prompts queued with that client id (ComfyUI's page sends its websocket id, ``api.clientId``),
  oldest first, so a reloaded page can draw its last runs again. Without a client id: no runs. Other clients'
  runs are never served.

In ComfyUI 0.3.75 the running prompt's client id is ``PromptServer.instance.client_id``: ``PromptExecutor``
sets it from the prompt's ``extra_data["client_id"]`` before executing (execution.py, ``execute_async``), and
main.py's worker sets ``last_prompt_id``. Runs of prompts queued without a client id are kept (in-process readers
see them) but served and pushed to nobody, as ComfyUI does with its own ``executed`` events.

ComfyUI's ``server`` module is only looked up in ``sys.modules`` (it is there when main.py runs): importing the
pack in a process without a server (the in-process tests, diffusers) registers no route and sends nothing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from typing import Any

from ...cache_core import feedback
from ...cache_core.text import shown
from . import run_log

log = logging.getLogger("dit_cache")

ROUTE = "/dit-cache/runs"
RUN_EVENT = "dit-cache.run"
STEP_EVENT = "dit-cache.step"
WARNING_EVENT = "dit-cache.warning"
MAX_WARNED = 256  # (prompt, node, message) keys remembered to send each warning once

_registered = False


def prompt_server() -> Any | None:
    """ComfyUI's running ``PromptServer`` instance, or None outside a ComfyUI server process."""
    mod = sys.modules.get("server")
    cls = getattr(mod, "PromptServer", None)
    inst = getattr(cls, "instance", None)
    if inst is None or not hasattr(inst, "send_sync") or not hasattr(inst, "routes"):
        return None
    return inst


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (the page's JSON.parse rejects NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _running_prompt(srv: Any) -> tuple[str | None, str | None]:
    return getattr(srv, "client_id", None), getattr(srv, "last_prompt_id", None)


def executing_node_id() -> str | None:
    """The graph id of the node ComfyUI is executing now (``comfy_execution.utils.get_executing_context``,
    ComfyUI 0.3.6x+), or None outside a node's execution or where ComfyUI lacks it. A fallback for cache nodes
    that do not declare the hidden ``unique_id`` input."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    ctx = get_executing_context()
    node_id = getattr(ctx, "node_id", None) if ctx is not None else None
    return None if node_id is None else str(node_id)


def record(entry: dict[str, Any]) -> None:
    """Keep ``entry`` in the run log under the running prompt's client id (e.g. a saved calibration)."""
    srv = prompt_server()
    run_log.record(entry, client_id=_running_prompt(srv)[0] if srv is not None else None)


def publish(run: dict[str, Any]) -> dict[str, Any]:
    """Record ``run`` (a ``RunStats.to_dict()`` plus node fields) and push it to the page that queued it."""
    srv = prompt_server()
    client_id, prompt_id = _running_prompt(srv) if srv is not None else (None, None)
    run = json_safe(dict(run, prompt_id=prompt_id))
    run_log.record(run, client_id=client_id)
    if srv is not None and client_id is not None:
        try:
            srv.send_sync(RUN_EVENT, run, sid=client_id)
        except Exception:  # the statistics must never fail a finished sampling run
            log.warning("[dit-cache] could not send the run statistics to the page", exc_info=True)
    return run


def send_to_page(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` plus the running prompt's ``prompt_id``, sent as ``event`` to the page that queued the running
    prompt (as ``publish`` does; e.g. MagCache Calibrate's ``dit_cache.magcache_calibrated``). Returns what was
    (or, without a server or client id, would have been) sent; never raises."""
    srv = prompt_server()
    client_id, prompt_id = _running_prompt(srv) if srv is not None else (None, None)
    data = json_safe(dict(data, prompt_id=prompt_id))
    if srv is not None and client_id is not None:
        try:
            srv.send_sync(event, data, sid=client_id)
        except Exception:
            log.warning("[dit-cache] could not send %s to the page", event, exc_info=True)
    return data


_warned: dict[tuple[str | None, str | None, str], None] = {}


def send_warning(node: str, node_id: str | None, message: str) -> dict[str, Any] | None:
    """A user-facing warning (``cache_core.feedback.warn``'s sink; the caller has logged it): recorded in the run
    log under the running prompt's client id and sent as ``dit-cache.warning`` to the page that queued it, once per
    prompt, node and message (outside a server process: nothing to do). ``node_id`` None: the node ComfyUI is
    executing. Returns what was sent, or None for a repeat; never raises."""
    if node_id is None:
        node_id = executing_node_id()
    srv = prompt_server()
    client_id, prompt_id = _running_prompt(srv) if srv is not None else (None, None)
    key = (prompt_id, node_id, message)
    if prompt_id is not None:  # outside a prompt (tests, bench) every warning is new
        if key in _warned:
            return None
        _warned[key] = None
        while len(_warned) > MAX_WARNED:
            del _warned[next(iter(_warned))]
    data = json_safe({"node_id": node_id, "node": node, "message": message, "prompt_id": prompt_id})
    if srv is None:  # no page to serve it to: the log line is all (in-process callers read run_log's runs)
        return data
    run_log.record({"method": "warning", "node_id": node_id, "prompt_id": prompt_id, "warning": data},
                   client_id=client_id)
    if client_id is not None:
        try:
            srv.send_sync(WARNING_EVENT, data, sid=client_id)
        except Exception:
            log.debug("[dit-cache] could not send a warning to the page", exc_info=True)
    return data


feedback.add_sink(send_warning)


def publish_step(spec: Any, stats: Any, first_record: int) -> None:
    """Push the records ``stats`` gained since ``first_record`` (one model call's per-stream decisions) to the
    page that queued the running prompt. ``spec`` is the model's ``CacheSpec``; a no-op without such a page."""
    srv = prompt_server()
    if srv is None:
        return
    client_id, prompt_id = _running_prompt(srv)
    if client_id is None:
        return
    try:
        records = [dataclasses.asdict(r) for r in stats.records[first_record:]]
        srv.send_sync(STEP_EVENT, json_safe({
            "node_id": getattr(spec, "node_id", None), "spec_id": getattr(spec, "id", None),
            "node": getattr(spec, "node_label", None), "prompt_id": prompt_id, "method": stats.method,
            "calls": stats.calls, "skipped_calls": stats.skipped_calls, "records": records}), sid=client_id)
    except Exception:
        log.warning("[dit-cache] could not send a live step to the page", exc_info=True)


def register_routes() -> bool:
    """Add ``GET /dit-cache/runs`` to ComfyUI's server; a no-op without a server or when already added."""
    global _registered
    srv = prompt_server()
    if srv is None or _registered:
        return _registered
    from aiohttp import web

    @srv.routes.get(ROUTE)
    async def dit_cache_runs(request: web.Request) -> web.Response:
        runs = run_log.for_client(request.rel_url.query.get("client_id") or None)
        raw = request.rel_url.query.get("limit")
        if raw is not None:
            try:
                limit = int(raw)
                if limit < 0:
                    raise ValueError
            except ValueError:
                return web.json_response({"error": f"limit must be a non-negative integer, got {shown(raw)}"},
                                         status=400)
            runs = runs[-limit:] if limit else []
        # entries recorded by other nodes may hold values JSON has no type for: those are sent as text
        return web.json_response(json_safe({"runs": runs, "max_runs": run_log.MAX_RUNS,
                                            "max_bytes": run_log.MAX_BYTES}),
                                 dumps=lambda o: json.dumps(o, default=str))

    _registered = True
    log.info("[dit-cache] statistics route %s registered", ROUTE)
    return True


# ComfyUI imports the pack after creating its PromptServer and adds the route table to the app afterwards
# (main.py: PromptServer(loop) -> init_extra_nodes -> add_routes), so registering at import is in time.
register_routes()
