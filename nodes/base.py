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

Input checks (:meth:`CacheNode.check_inputs`): ComfyUI 0.3.75 checks the min/max of a number input only where the
node's ``validate_inputs`` does not name it, never checks a V3 combo's value against its options, and accepts NaN
for a float. So every node's ``validate_inputs`` names exactly its float, combo and text inputs (no ``**kwargs``:
ComfyUI would skip its own checks for every input) and returns ``cls.check_inputs(locals())``: each value checked
against the node's schema (finite, min/max, listed choice, text length), then every ``<prefix>start_percent`` below
its ``<prefix>end_percent``; a linked input (None while validating) is checked when the node runs.
:meth:`CacheNode.execute` checks every input's type again (linked values, ``null``, NaN; not min/max, as ComfyUI
never does for linked values) before it reads any, unless the node is off. Values are shown escaped (``cache_core/text.py``).
ComfyUI repeats a failed ``validate_inputs``'s message once per input it names: a window error, say, comes back
once per float and combo input of the node, each time the same sentence (unavoidable without ``**kwargs``).
"""
from __future__ import annotations

import logging
import math
from typing import Any

from comfy_api.latest import io

from ..cache_core.registry import policy_for
from ..cache_core.text import described, plain, shown
from ..hosts.comfy.patch import apply_cache
from . import calibration_store
from .common_inputs import validate_windows
from .naming import ROOT, alias_options, mark_advanced

log = logging.getLogger("dit_cache")

CATEGORY = ROOT  # the pack's root category; nodes pass their group (nodes/naming.py)

_labels: dict[Any, str] = {}  # define_schema function -> display name (ComfyUI runs a fresh class clone per run)

MAX_TEXT = 100  # characters of a text input (a file name prefix: the file name adds about 40 and must fit 255)
LISTED = 12  # a choice error lists the choices when there are at most this many


def _number_problem(name: str, spec: Any, value: Any, whole: bool, ranges: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        return f"{name} must be a {'whole number' if whole else 'number'}, got {described(value)}"
    if not whole and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if not ranges:
        return None
    lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"{name} must be between {lo:g} and {hi:g}, got {shown(value, 40)}"
    if lo is not None and value < lo:
        return f"{name} must be at least {lo:g}, got {shown(value, 40)}"
    if hi is not None and value > hi:
        return f"{name} must be at most {hi:g}, got {shown(value, 40)}"
    return None


def _choice_problem(name: str, spec: Any, value: Any, listed_only: bool) -> str | None:
    options = list(spec.options or [])
    if isinstance(value, str) and (value in options or not listed_only):
        return None
    if not options:
        listed = " (none are listed yet)"
    elif len(options) <= LISTED:
        listed = f" ({', '.join(plain(o) for o in options)})"
    else:
        listed = ""
    if not isinstance(value, str):
        return f"{name} must be one of the listed choices{listed}, got {described(value)}"
    # the same words for every name that is not listed (a path, a missing file): nothing is looked up
    return f"{name} {shown(value)} is not one of the listed choices{listed}"


def _text_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be text, got {described(value)}"
    if len(value) > MAX_TEXT:
        return f"{name} is {len(value)} characters long, at most {MAX_TEXT}"
    return None


class CacheNode(io.ComfyNode):
    """Base of the pack's nodes (not a node itself: ``nodes.NODES`` lists the registry's node classes)."""

    OFF_INPUT: str | None = None  # the input whose value 0 turns the method off ("threshold", "alpha", ...)
    DISABLED = "cache disabled"  # what the log says when the config built is not ``enabled`` (PAB, FasterCache)

    # ------------------------------------------------------------------ schema and identity
    @classmethod
    def schema(cls, node_id: str, display_name: str, description: str, inputs: list, output: str,
               hidden: tuple[io.Hidden, ...] = (io.Hidden.unique_id,), category: str = CATEGORY,
               advanced: tuple[str, ...] = (), face: tuple[str, ...] = (), aliases: tuple[str, ...] = (),
               **options: Any) -> io.Schema:
        """The node's schema: its ``category`` (a group of nodes/naming.py), one MODEL output (tooltip ``output``),
        the hidden unique id (the statistics panel shows runs per node) unless ``hidden`` says otherwise. Inputs
        named in ``advanced`` (and the shared window / skip-limit / warm-up inputs unless named in ``face``) are
        hidden until "Show Advanced"; ``aliases`` are search aliases where the host's schema has them."""
        return io.Schema(node_id=node_id, display_name=display_name, category=category, description=description,
                         inputs=mark_advanced(inputs, advanced, face), outputs=[io.Model.Output(tooltip=output)],
                         hidden=list(hidden), **alias_options(aliases), **options)

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

    # ------------------------------------------------------------------ input checks
    @classmethod
    def input_problems(cls, values: dict[str, Any], at_run: bool = False) -> list[str]:
        """What is wrong with ``values`` (input name -> value) against the node's schema, in plain words (empty:
        nothing). While validating (``at_run`` False) None is a linked input not known yet and passes. When the
        node runs None is a ``null`` sent for the input, and only types and finiteness are checked: not the
        schema's min/max (ComfyUI never applies them to linked values; the method's config checks its ranges) nor
        a combo's list (the value was checked at /prompt, a STRING cannot be linked to a combo, and a calibration
        is resolved against the listed files anyway). Inputs the schema lacks and MODEL inputs are not looked
        at."""
        specs = {i.id: i for i in cls.define_schema().inputs}
        problems: list[str] = []
        numbers: dict[str, float] = {}
        for name, value in values.items():
            spec = specs.get(name)
            if spec is None or isinstance(spec, io.Model.Input) or (value is None and not at_run):
                continue
            if isinstance(spec, io.Float.Input):
                problem = _number_problem(name, spec, value, whole=False, ranges=not at_run)
            elif isinstance(spec, io.Int.Input):
                problem = _number_problem(name, spec, value, whole=True, ranges=not at_run)
            elif isinstance(spec, io.Combo.Input):
                problem = _choice_problem(name, spec, value, listed_only=not at_run)
            elif isinstance(spec, io.String.Input):
                problem = _text_problem(name, value)
            else:
                problem = None
            if problem is None and isinstance(spec, io.Float.Input):
                numbers[name] = value
            elif problem is not None:
                problems.append(problem)
        windows = {name[: -len("start_percent")].rstrip("_"): (numbers[name], numbers[end])
                   for name in numbers if name.endswith("start_percent")
                   and (end := name[: -len("start_percent")] + "end_percent") in numbers}
        order = validate_windows(windows)
        if order is not True:
            problems.append(order)
        return problems

    @classmethod
    def check_inputs(cls, named: dict[str, Any]) -> bool | str:
        """``validate_inputs`` helper: ``named`` is the ``locals()`` of a ``validate_inputs`` that names the node's
        float, combo and text inputs. True, or one message with every problem."""
        problems = cls.input_problems({k: v for k, v in named.items() if k != "cls"})
        return "; ".join(problems) if problems else True

    @classmethod
    def reject_bad_inputs(cls, inputs: dict[str, Any]) -> None:
        """Before a node runs: ValueError naming every input whose value cannot work (linked values and ``null``
        reach the node without passing ``validate_inputs``)."""
        problems = cls.input_problems(inputs, at_run=True)
        if problems:
            raise ValueError(f"{cls.label()}: " + "; ".join(problems))

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
        if reason is None:  # a node switched off reads none of its other inputs
            cls.reject_bad_inputs(inputs)
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
