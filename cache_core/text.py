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


def plain(value: Any, limit: int = 60) -> str:
    """``value`` as it is when it is short printable ASCII text (a sampler name, a model family, a file name as
    ComfyUI lists it), else :func:`shown` (escaped, quoted, cut): for text that is usually a plain word but comes
    from outside (a prompt, a file's metadata or name)."""
    if isinstance(value, str) and len(value) <= limit and value.isascii() and value.isprintable():
        return value
    return shown(value, limit)


def described(value: Any) -> str:
    """``value`` in plain words for a message about its type: ``nothing (null)``, ``true``, ``the number 123``,
    ``the text 'abc'`` (escaped), ``a list``, ``an object``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {shown(value, 40)}"
    if isinstance(value, str):
        return f"the text {shown(value)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
