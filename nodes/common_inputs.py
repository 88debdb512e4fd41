"""Inputs the cache nodes share (schedule window, skip limits), with their tooltips."""
from __future__ import annotations

from comfy_api.latest import io


def window_inputs(start: float = 0.0) -> list:
    """start_percent / end_percent: the part of the schedule where a method may skip (``start``: the default
    start_percent)."""
    return [
        io.Float.Input(
            "start_percent", default=start, min=0.0, max=1.0, step=0.01,
            tooltip="Where in the schedule skipping may begin (0 = first step, 1 = last); earlier steps always "
                    "compute. Converted to a sigma with the model's own schedule.",
        ),
        io.Float.Input(
            "end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
            tooltip="Where in the schedule skipping stops; later steps always compute.",
        ),
    ]


def max_consecutive_skips_input() -> io.Int.Input:
    return io.Int.Input(
        "max_consecutive_skips", default=-1, min=-1, max=1000,
        tooltip="After this many skipped steps in a row the next step is computed. -1 = no limit.",
    )


def gate_inputs(start: float = 0.0) -> list:
    """The window, the consecutive-skip limit and the warm-up (methods using the full :class:`Gate`)."""
    return [
        *window_inputs(start),
        max_consecutive_skips_input(),
        io.Int.Input(
            "warmup_steps", default=0, min=0, max=1000,
            tooltip="The first steps of each CFG stream (cond/uncond) always compute.",
        ),
    ]


def named_window_inputs(prefix: str, what: str, start: float, end: float) -> list:
    """``<prefix>_start_percent`` / ``<prefix>_end_percent``: the window of one part of a method, with the
    equivalent diffusers timestep range (0-1000) in the tooltip."""
    def t(p: float) -> int:
        return round(1000 * (1 - p))

    note = (f"Default {start:g}-{end:g} of the schedule, diffusers' timestep range ({t(end)}, {t(start)}): "
            f"timestep = 1000 x the model's sigma at that percent, i.e. 1000 x (1 - percent) before the model's shift.")
    return [
        io.Float.Input(f"{prefix}_start_percent", default=start, min=0.0, max=1.0, step=0.001,
                       tooltip=f"Where in the schedule {what} may begin (0 = first step). {note}"),
        io.Float.Input(f"{prefix}_end_percent", default=end, min=0.0, max=1.0, step=0.001,
                       tooltip=f"Where {what} stops (1 = last step)."),
    ]


def validate_windows(windows: dict[str, tuple[float | None, float | None]]) -> bool | str:
    """validate_inputs helper: for each ``{prefix: (start, end)}``, ``<prefix>_start_percent`` below
    ``<prefix>_end_percent`` (prefix "": the plain ``start_percent`` / ``end_percent``). One message names every
    window that is wrong; values of linked inputs (None while validating) are not checked."""
    wrong = []
    for prefix, (start, end) in windows.items():
        if start is not None and end is not None and start >= end:
            name = f"{prefix}_" if prefix else ""
            wrong.append(f"{name}start_percent ({start}) must be smaller than {name}end_percent ({end})")
    return "; ".join(wrong) if wrong else True
