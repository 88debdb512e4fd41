"""Apply a registered method through its own node with given inputs (every other input at the node's default):
what DiT Cache Tune measures and what the start-here node applies, so neither re-implements a method."""
from __future__ import annotations

import importlib
from typing import Any

from comfy_api.latest import io

from ..cache_core.registry import methods


def node_class(key: str) -> type:
    """The apply node of method ``key``: its first node whose schema has the method's tune input (else its first
    node)."""
    spec = methods()[key]
    classes = []
    for ref in spec.nodes:
        module, name = ref.split(":")
        classes.append(getattr(importlib.import_module(f"{__package__}.{module}"), name))
    if spec.tune is not None:
        for cls in classes:
            if any(i.id == spec.tune.input for i in cls.define_schema().inputs):
                return cls
    return classes[0]


def node_inputs(cls: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Keyword inputs for ``cls`` (all but the model): ``given`` ones, every other at the node's default. An Int
    input takes a whole number only; an unknown name raises ValueError."""
    schema = cls.define_schema()
    inputs = [i for i in schema.inputs if i.id != "model"]
    unknown = set(given) - {i.id for i in inputs}
    if unknown:
        raise ValueError(f"{schema.node_id} has no input {', '.join(sorted(map(repr, unknown)))}")
    out: dict[str, Any] = {}
    for inp in inputs:
        value = given.get(inp.id, getattr(inp, "default", None))
        if isinstance(inp, io.Int.Input) and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{schema.node_id}: {inp.id} takes whole numbers, got {value:g}")
            value = int(value)
        out[inp.id] = value
    return out


def build(cls: Any, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any] | None:
    """(config, policy) of node ``cls`` for these inputs, through the node's own checks and config (None: the
    inputs leave the model unchanged, e.g. a threshold of 0, or the node said why it cannot apply)."""
    if cls.off_reason(**inputs) is not None:
        return None
    cls.reject_bad_inputs(inputs)
    config = cls.make_config(model, **inputs)
    if config is None or not getattr(config, "enabled", True):
        return None
    return config, cls.make_policy(model, config)
