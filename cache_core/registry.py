"""The one list of caching methods: each method module in ``cache_core/methods/`` registers itself here.

A :class:`MethodSpec` says everything the rest of the pack needs to know about a method: its key and label,
its config class and the factory that turns a config into a policy, the ComfyUI node classes that apply it
(named as ``"<module in nodes/>:<class>"``, so the core never imports ComfyUI), the hosts that run it and the
calibration format it saves, if any. ComfyUI's node list (``nodes.NODES``), the diffusers host's
config → policy table and the public names of ``cache_core`` are all built from :func:`methods`.

Method modules are found by listing ``cache_core/methods/`` (:func:`load_methods`): adding a method means adding
its module (with one ``register(...)`` call) and its node module, nothing else to edit.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

HOSTS = ("comfy", "diffusers")
# "chooser": not a method of its own but nodes that pick another method and its setting (DiT Cache Tune, the
# start-here node): no support-matrix or sweep entry, see tests/core/test_registry.py
SCOPES = ("run", "prompts", "chooser")


@dataclass(frozen=True)
class TuneKnob:
    """The one input of a method's apply node that "DiT Cache Tune" searches (cache_core/tune.py): every other
    input stays at the node's default, so the tuner needs no per-method code."""

    input: str  # the apply node's input ("rel_l1_threshold", "cache_interval", ...)
    low: float  # the range searched
    high: float
    larger_is_faster: bool = True  # direction: does a larger value skip more?
    integer: bool = False  # whole numbers only (an Int input)
    steps: int = 5  # bisection steps (float knobs; integer knobs stop when the bracket is one apart)
    fixed: tuple[tuple[str, Any], ...] = ()  # other inputs held at a value other than the node's default

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"tune knob {self.input!r}: low ({self.low}) must be below high ({self.high})")
        if self.steps < 1:
            raise ValueError(f"tune knob {self.input!r}: steps must be at least 1")


@dataclass(frozen=True)
class MethodSpec:
    key: str  # short name: support-matrix column, bench sweep entry, file names ("fbc", "magcache", ...)
    label: str  # what people call it ("First Block Cache")
    config: type  # the <Method>Config dataclass
    policy: Callable[[Any], Any]  # config -> policy (a Policy or a ComponentPolicy)
    nodes: tuple[str, ...] = ()  # ComfyUI nodes applying it, "<module in nodes/>:<class>"
    hosts: tuple[str, ...] = HOSTS  # hosts that run it
    calibration: str | None = None  # the calibration file format it saves/reads, if any
    exports: tuple[str, ...] = ()  # further public names of the method module (re-exported by cache_core)
    # "run": reuses work inside one sampling run (every block/step cache); "prompts": across runs (Prompt Cache,
    # Nirvana): one run alone skips nothing, so the support matrix and the knob sweep (which judge single runs)
    # do not apply to it; tests/core/test_registry.py asks it for its own benchmark instead
    scope: str = "run"
    # the knob "DiT Cache Tune" searches on the method's first node; None: not tuned (calibrated methods, methods
    # that skip no block)
    tune: TuneKnob | None = None

    def __post_init__(self) -> None:
        unknown = set(self.hosts) - set(HOSTS)
        if unknown:
            raise ValueError(f"{self.key}: unknown hosts {sorted(unknown)}; known: {HOSTS}")
        if self.scope not in SCOPES:
            raise ValueError(f"{self.key}: unknown scope {self.scope!r}; known: {SCOPES}")
        for ref in self.nodes:
            if ref.count(":") != 1:
                raise ValueError(f"{self.key}: node reference {ref!r} must be '<module>:<class>'")


_METHODS: dict[str, MethodSpec] = {}
_MODULES: dict[str, str] = {}  # method key -> the module that registered it
_loaded = False  # cache_core/methods/ has been imported (its modules register once, at import)


def register(spec: MethodSpec, module: str | None = None) -> MethodSpec:
    """Add a method (called once, at the bottom of its module). A second method with the same key is an error."""
    if spec.key in _METHODS and _METHODS[spec.key] != spec:
        raise ValueError(f"method {spec.key!r} is registered twice ({_MODULES.get(spec.key)} and {module})")
    _METHODS[spec.key] = spec
    _MODULES[spec.key] = module or getattr(spec.config, "__module__", "")
    return spec


def load_methods() -> dict[str, MethodSpec]:
    """Import every module of ``cache_core/methods/`` (each registers its method; the folder is listed once per
    process) and return the registry."""
    global _loaded
    if not _loaded:
        package = importlib.import_module(f"{__package__}.methods")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _loaded = True
    return dict(_METHODS)


def methods() -> dict[str, MethodSpec]:
    """Every registered method, by key, in registration order (module names sorted)."""
    return load_methods()


def module_of(key: str) -> str:
    """The module that registered method ``key``."""
    load_methods()
    return _MODULES[key]


def spec_for(config: Any) -> MethodSpec:
    """The registered method whose config class ``config`` is (TypeError naming the known ones otherwise)."""
    for spec in load_methods().values():
        if type(config) is spec.config:
            return spec
    known = ", ".join(s.config.__name__ for s in _METHODS.values())
    raise TypeError(f"unsupported cache method {type(config).__name__}; expected a Policy or one of {known}")


def policy_for(method: Any) -> Any:
    """The policy for a method config (found by its class in the registry)."""
    return spec_for(method).policy(method)
