"""How the pack's nodes meet the user: their categories, which inputs are advanced, search aliases.

Names (issue 20): apply nodes are "Apply <Method>", calibrate nodes "<Method> Calibrate", the method written as
one word ("Apply FirstBlockCache", "Apply StepSchedule", "StepSchedule Calibrate"); "PAB Config" keeps the name
users were promised. Node ids (``DitCache.*``) never change, so saved workflows keep loading.
``tests/server/test_node_names_server.py`` checks the names and categories through a real server.

Categories: no node sits in the flat "dit-cache" category but the start-here node; each method's nodes sit in
the subcategory of what they skip (the node library shows one folder per group).

Advanced inputs: the V3 schema's input ``extra_dict`` passes ``{"advanced": True}`` to ``/object_info``; both
frontends we test (1.32 on ComfyUI 0.3.75, 1.35 on 0.8.0) then hide the widget until "Show Advanced" in the
node's context menu (the value still loads and saves with the workflow). :data:`ADVANCED_BY_DEFAULT` are the
inputs every method shares with sensible defaults (the schedule windows, skip limits and warm-up).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from comfy_api.latest import io

ROOT = "dit-cache"
STEPS = f"{ROOT}/step skipping"  # skip whole model calls (or all but the first blocks) on steps that change little
BLOCKS = f"{ROOT}/block caching"  # cache or forecast the middle blocks' features
ATTENTION = f"{ROOT}/attention"  # reuse attention outputs / the unconditional branch
PROMPTS = f"{ROOT}/across prompts"  # reuse whole early steps from earlier prompts
CALIBRATE = f"{ROOT}/calibrate"  # measure a model once, save a file the apply nodes read
CATEGORIES = (ROOT, STEPS, BLOCKS, ATTENTION, PROMPTS, CALIBRATE)

ADVANCED_BY_DEFAULT = ("start_percent", "end_percent", "max_consecutive_skips", "warmup_steps")


def is_advanced_by_default(name: str) -> bool:
    """The shared inputs (window, skip limit, warm-up) and every named window (``<part>_start_percent``)."""
    return name in ADVANCED_BY_DEFAULT or name.endswith("_start_percent") or name.endswith("_end_percent")


def mark_advanced(inputs: list, advanced: Iterable[str], face: Iterable[str] = ()) -> list:
    """``inputs`` with ``{"advanced": True}`` in the extra_dict of those named in ``advanced`` and of the shared
    ones (:func:`is_advanced_by_default`) unless named in ``face``. A name in ``advanced`` or ``face`` that is
    not an input is a ValueError (a misspelt name would silently leave the widget on the face)."""
    ids = {getattr(i, "id", None) for i in inputs}
    advanced, face = set(advanced), set(face)
    unknown = (advanced | face) - ids
    if unknown:
        raise ValueError(f"advanced/face names {sorted(unknown)} are not inputs of the node ({sorted(map(str, ids))})")
    for spec in inputs:
        name = getattr(spec, "id", None)
        if isinstance(spec, io.Model.Input) or name in face:
            continue
        if name in advanced or is_advanced_by_default(name):
            spec.extra_dict = {**(spec.extra_dict or {}), "advanced": True}
    return inputs


def schema_supports(field: str) -> bool:
    """Whether this host's ``io.Schema`` has ``field`` (``search_aliases`` is newer than ComfyUI 0.8.0)."""
    return field in {f.name for f in dataclasses.fields(io.Schema)}


def alias_options(aliases: Iterable[str]) -> dict[str, Any]:
    """``{"search_aliases": [...]}`` where the host's schema has the field, else nothing (older hosts would
    reject the keyword)."""
    aliases = list(aliases)
    return {"search_aliases": aliases} if aliases and schema_supports("search_aliases") else {}
