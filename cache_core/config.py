"""Validation helpers and the settings every method shares (the active window of the schedule)."""
from __future__ import annotations

import math
from dataclasses import dataclass


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Raise ValueError unless ``lo <= value <= hi`` (and value is a finite number)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def check_int(name: str, value: int, lo: int, hi: int | None = None) -> None:
    """Raise ValueError unless ``value`` is an int in ``[lo, hi]`` (hi None: unbounded)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
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
