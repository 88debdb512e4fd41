"""What every dit-cache node shares: MODEL in, MODEL out, the hidden unique id, the "off" early return and the
attach call.

A node subclasses :class:`CacheNode`, keeps its own ``define_schema`` and says only what is its own::

    class ApplyX(CacheNode):
        OFF_INPUT = "threshold"   # optional: threshold 0 leaves the model unchanged (or override off_reason)

        @classmethod
        def define_schema(cls):            # node id, display name, inputs, tooltips: the node's own
            return cls.schema(...)

        @classmethod
        def make_config(cls, model, threshold, ...):   # the method's config (None: the node said why, model unchanged)
            return XConfig(threshold=threshold, ...)

:meth:`CacheNode.execute` runs ``off_reason`` (logs ``[dit-cache] <display name>: <reason> (model unchanged)``),
then ``make_config`` (a config whose ``enabled`` is False is off too; the log gives ``DISABLED``), then
``make_policy`` (the registry's ``policy_for(config)`` unless the node needs the model, e.g. DBCache's block
check) and attaches the policy with ComfyUI's ``apply_cache`` under the node's display name and graph id.
ComfyUI calls ``execute`` with keyword inputs; direct callers (tests, bench) must too.

Window validation: :class:`WindowedNode` checks ``start_percent`` < ``end_percent``. Its ``validate_inputs``
names exactly the inputs it reads: a ``validate_inputs`` taking ``**kwargs`` makes ComfyUI skip its own min/max
and choice checks for every input of the node.
"""
from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from ..cache_core.registry import policy_for
from ..hosts.comfy.patch import apply_cache
from . import calibration_store
from .common_inputs import validate_window

log = logging.getLogger("dit_cache")

CATEGORY = "dit-cache"

_labels: dict[Any, str] = {}  # define_schema function -> display name (ComfyUI runs a fresh class clone per run)


class CacheNode(io.ComfyNode):
    """Base of the pack's nodes (not a node itself: ``nodes.NODES`` lists the registry's node classes)."""

    OFF_INPUT: str | None = None  # the input whose value 0 turns the method off ("threshold", "alpha", ...)
    DISABLED = "cache disabled"  # what the log says when the config built is not ``enabled`` (PAB, FasterCache)

    # ------------------------------------------------------------------ schema and identity
    @classmethod
    def schema(cls, node_id: str, display_name: str, description: str, inputs: list, output: str,
               hidden: tuple[io.Hidden, ...] = (io.Hidden.unique_id,), **options: Any) -> io.Schema:
        """The node's schema: category "dit-cache", one MODEL output (tooltip ``output``), the hidden unique id
        (the statistics panel shows runs per node) unless ``hidden`` says otherwise."""
        return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                         inputs=inputs, outputs=[io.Model.Output(tooltip=output)], hidden=list(hidden), **options)

    @classmethod
    def label(cls) -> str:
        """The node's display name (from its schema): log lines, run records and the statistics panel use it."""
        key = cls.define_schema.__func__  # the same function for ComfyUI's per-run class clones
        if key not in _labels:
            _labels[key] = cls.define_schema().display_name
        return _labels[key]

    @classmethod
    def node_id(cls) -> str | None:
        """The node's graph id (the hidden unique_id; None outside ComfyUI's executor, e.g. a direct call)."""
        hidden = cls.hidden
        uid = hidden.unique_id if hidden is not None else None
        return None if uid is None else str(uid)

    @classmethod
    def identify(cls, model: Any, unsupported: str = "the model is left unchanged"
                 ) -> calibration_store.ModelIdentity | None:
        """The model's identity (layout, class, block hash, weights hint), or None after a warning saying that
        it is not a supported DiT and what follows (``unsupported``)."""
        ident = calibration_store.identify(model)
        if ident is None:
            log.warning("[dit-cache] %s: %s is not a supported DiT model; %s", cls.label(),
                        type(model.get_model_object("diffusion_model")).__name__, unsupported)
        return ident

    # ------------------------------------------------------------------ what a node says
    @classmethod
    def off_reason(cls, **inputs: Any) -> str | None:
        """Why these inputs leave the model unchanged; None: they do not. By default: ``OFF_INPUT`` is 0."""
        if cls.OFF_INPUT is not None and inputs.get(cls.OFF_INPUT) == 0:
            return f"{cls.OFF_INPUT} 0, cache disabled"
        return None

    @classmethod
    def make_config(cls, model: Any, **inputs: Any) -> Any:
        """The method's config from the node's inputs; None when the model stays unchanged (the node has logged
        why). ValueError for inputs that cannot work (raised before sampling)."""
        raise NotImplementedError

    @classmethod
    def make_policy(cls, model: Any, config: Any) -> Any:
        """The policy for ``config`` (the registry's); nodes that check it against the model override this."""
        return policy_for(config)

    # ------------------------------------------------------------------ the shared flow
    @classmethod
    def execute(cls, model: Any, **inputs: Any) -> io.NodeOutput:
        reason = cls.off_reason(**inputs)
        config = None if reason is not None else cls.make_config(model, **inputs)
        if config is not None and not getattr(config, "enabled", True):
            reason = cls.DISABLED
        if reason is not None:
            log.info("[dit-cache] %s: %s (model unchanged)", cls.label(), reason)
            return io.NodeOutput(model)
        if config is None:  # make_config has said why
            return io.NodeOutput(model)
        return cls.attach(model, cls.make_policy(model, config))

    @classmethod
    def attach(cls, model: Any, policy: Any, ui: dict | None = None) -> io.NodeOutput:
        """A clone of ``model`` running ``policy``, under this node's display name and graph id."""
        return io.NodeOutput(apply_cache(model, policy, cls.label(), cls.node_id()), ui=ui)


class WindowedNode(CacheNode):
    """A node with the ``start_percent`` / ``end_percent`` inputs (common_inputs.window_inputs)."""

    @classmethod
    def validate_inputs(cls, start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        return validate_window(start_percent, end_percent)
