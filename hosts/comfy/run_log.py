"""The last sampling runs' statistics, kept in memory for the page and the tests (bounded)."""
from __future__ import annotations

import collections
import threading
from typing import Any

MAX_RUNS = 32
_runs: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RUNS)
_lock = threading.Lock()


def record(run: dict[str, Any]) -> None:
    with _lock:
        _runs.append(run)


def recent() -> list[dict[str, Any]]:
    with _lock:
        return list(_runs)


def last() -> dict[str, Any] | None:
    with _lock:
        return _runs[-1] if _runs else None


def clear() -> None:
    with _lock:
        _runs.clear()
