"""The last sampling runs' statistics, kept in memory for the page and the tests, with the client id of the prompt
that made each (the page is served its own runs only).

Bounded twice: at most ``MAX_RUNS`` entries and ``MAX_BYTES`` of their JSON; the oldest go first, and the newest
entry is always kept (even alone above ``MAX_BYTES``).
"""
from __future__ import annotations

import collections
import json
import threading
from typing import Any, NamedTuple

MAX_RUNS = 32
MAX_BYTES = 2 * 1024 * 1024  # JSON bytes of the kept entries (a 1000-step run with its per-call records: ~300 KB)


class _Entry(NamedTuple):
    client_id: str | None
    run: dict[str, Any]
    size: int  # bytes of its JSON


_entries: collections.deque[_Entry] = collections.deque()
_bytes = 0
_lock = threading.Lock()


def record(run: dict[str, Any], client_id: str | None = None) -> None:
    """Keep ``run``, made by a prompt of ``client_id`` (None: a prompt queued without one, served to nobody)."""
    global _bytes
    size = len(json.dumps(run, default=str))
    with _lock:
        _entries.append(_Entry(client_id, run, size))
        _bytes += size
        while len(_entries) > MAX_RUNS or (_bytes > MAX_BYTES and len(_entries) > 1):
            _bytes -= _entries.popleft().size


def recent() -> list[dict[str, Any]]:
    """Every kept run, oldest first (in-process callers: tests, bench)."""
    with _lock:
        return [e.run for e in _entries]


def for_client(client_id: str | None) -> list[dict[str, Any]]:
    """The kept runs of prompts queued by ``client_id``, oldest first; none for None."""
    if client_id is None:
        return []
    with _lock:
        return [e.run for e in _entries if e.client_id == client_id]


def last() -> dict[str, Any] | None:
    with _lock:
        return _entries[-1].run if _entries else None


def size_bytes() -> int:
    """JSON bytes of the kept runs."""
    with _lock:
        return _bytes


def clear() -> None:
    global _bytes
    with _lock:
        _entries.clear()
        _bytes = 0
