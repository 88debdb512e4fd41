"""Few-step schedules (distilled models: Lightning, Turbo, schnell-style, 4-8 steps): where caching cannot pay.

Every step of such a schedule moves the sample a long way, so a reused step costs more quality than at 20-50
steps and saves a larger share of very little time; the methods' warm-ups, windows and retention steps also cover
most of a short run. A sampling run (a KSamplerAdvanced part of a split schedule counts on its own: the cache
only sees its run) of at most :data:`FEW_STEPS` steps gets one warning naming the step count (hosts log it
and put it in the run record's ``details``); the decisions themselves are left to the method's settings: the
metric-driven methods skip little or nothing there on their own, the schedule-driven ones (TaylorSeer's
``cache_interval``, DeepCache's ``interval``) skip on schedule (see docs/nodes.md, "Few-step models").
"""
from __future__ import annotations

from typing import Sequence

FEW_STEPS = 8  # at most this many sampling steps: a few-step schedule
# methods that skip on a fixed schedule whatever the model does: a few-step run costs them the most
SCHEDULED = ("TaylorSeer", "DeepCache")


def schedule_steps(sigmas: Sequence[float] | None) -> int | None:
    """Sampling steps of a run's sigma schedule (one fewer than the sigmas), None when unknown."""
    return len(sigmas) - 1 if sigmas is not None and len(sigmas) > 1 else None


def few_step_note(method: str, sigmas: Sequence[float] | None) -> str | None:
    """A warning for a run of at most FEW_STEPS steps (None otherwise, or for a calibration run, which measures)."""
    steps = schedule_steps(sigmas)
    if steps is None or steps > FEW_STEPS or "Calibrat" in method:
        return None
    why = ("it skips on a fixed schedule: raise its interval or use 20+ steps" if method in SCHEDULED else
           "it skips only where its metric allows, which at this step count is seldom")
    return (f"{steps} sampling steps in this run (a few-step / distilled schedule, or a short part of a split one "
            f"such as a Wan 2.2 expert's): each step changes the result a lot and caching saves little here; "
            f"{method}: {why}")
