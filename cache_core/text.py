"""User-supplied text (a file name, a prompt value) as it may appear in a message or a log line.

A value from a request is data: it is shown escaped — no lone surrogates (ComfyUI's console wrapper raises on
them and stops the prompt worker), no control characters, bounded length — and quoted, so the reader sees
where it starts and ends.
"""
from __future__ import annotations

from typing import Any

MAX_SHOWN = 120  # characters of a value shown before it is cut


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` for a message: ``repr`` of a string with every non-printable or non-ASCII-safe character
    escaped (``\\udcff``, ``\\n``, ``\\x1b``), cut to ``limit`` characters with ``...`` marking the cut; other types
    by their ``repr`` the same way."""
    text = ascii(value) if isinstance(value, str) else ascii(repr(value))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
