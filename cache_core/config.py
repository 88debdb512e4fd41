"""Validation helpers and the settings every method shares: the active window of the schedule, the gate
(warm-up, consecutive-skip limit, window) and the run-record settings derived from a config's fields."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .text import described


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Raise ValueError unless ``lo <= value <= hi`` (and value is a finite number)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {described(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def check_int(name: str, value: int, lo: int, hi: int | None = None) -> None:
    """Raise ValueError unless ``value`` is an int in ``[lo, hi]`` (hi None: unbounded)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {described(value)}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclass(frozen=True)
class CacheWindow:
    """Part of the schedule where caching may skip work, as fractions of the schedule (0 = first step).

    Hosts that know the noise schedule turn the percents into sigmas (ComfyUI:
    ``model_sampling.percent_to_sigma``); a call is inside the window when
    ``end_sigma < sigma <= start_sigma``. Without a sigma (e.g. diffusers pipelines) every call is inside.
    """

    start_percent: float = 0.0
    end_percent: float = 1.0

    def __post_init__(self) -> None:
        check_range("start_percent", self.start_percent, 0.0, 1.0)
        check_range("end_percent", self.end_percent, 0.0, 1.0)
        if self.start_percent >= self.end_percent:
            raise ValueError(
                f"start_percent ({self.start_percent}) must be smaller than end_percent ({self.end_percent})"
            )


@dataclass(frozen=True)
class SigmaWindow:
    """A :class:`CacheWindow` resolved against one model's noise schedule."""

    start_sigma: float = math.inf
    end_sigma: float = -math.inf

    def contains(self, sigma: float | None) -> bool:
        if sigma is None:
            return True
        return self.end_sigma < sigma <= self.start_sigma


@dataclass(frozen=True)
class Gate:
    """Settings that decide when a method may skip at all.

    warmup_steps: the first calls of each CFG stream always compute. max_consecutive_skips: after that many
    skips in a row the next call computes (-1 = no limit). window: the part of the schedule where skipping
    is allowed.
    """

    warmup_steps: int = 0
    max_consecutive_skips: int = -1
    window: CacheWindow = CacheWindow()
    # after this many skipped calls of a stream in the whole run, every later call computes (-1 = no limit)
    max_cached_steps: int = -1

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("max_consecutive_skips", self.max_consecutive_skips, -1)
        check_int("max_cached_steps", self.max_cached_steps, -1)


# Field metadata read by :func:`config_settings`: ``SETTING`` renames a field in the run record, ``HIDDEN``
# leaves it out (e.g. calibrated curves, which are summarised by the policy instead).
SETTING = "dit_cache_setting"
HIDDEN = {SETTING: None}


def config_settings(config: Any) -> dict[str, Any]:
    """The settings a run record shows for a config dataclass: every init field, in declaration order, under its
    ``SETTING`` name if it has one; a :class:`CacheWindow` as ``[start_percent, end_percent]``."""
    out: dict[str, Any] = {}
    fields = [f for f in dataclasses.fields(config) if not f.kw_only] + [f for f in dataclasses.fields(config) if f.kw_only]
    for f in fields:  # the order of the constructor: a method's own fields, then the shared ones
        if not f.init:
            continue
        name = f.metadata.get(SETTING, f.name)
        if name is None:
            continue
        value = getattr(config, f.name)
        out[name] = [value.start_percent, value.end_percent] if isinstance(value, CacheWindow) else value
    return out


@dataclass(frozen=True, kw_only=True)
class GatedConfig:
    """The fields every step-skipping method shares, as keyword-only fields of its config: the schedule window
    (``start_percent`` / ``end_percent``), the warm-up and the consecutive-skip limit. A method with other
    defaults re-declares a field (``field(default=..., kw_only=True)``); one without a field sets
    ``metadata=HIDDEN`` on it. :attr:`gate` is the resulting :class:`Gate`."""

    warmup_steps: int = 0
    max_consecutive_skips: int = -1
    start_percent: float = 0.0
    end_percent: float = 1.0

    @property
    def gate(self) -> Gate:
        return Gate(self.warmup_steps, self.max_consecutive_skips, CacheWindow(self.start_percent, self.end_percent),
                    max_cached_steps=getattr(self, "max_cached_steps", -1))

    def __post_init__(self) -> None:
        self.gate  # noqa: B018 - validates the window and the limits at construction
