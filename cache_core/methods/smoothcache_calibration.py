"""SmoothCache calibrations: ``.safetensors`` files written by "SmoothCache Calibrate", kept in the same
calibration store as MagCache's (ComfyUI: ``models/magcache``), told apart by their ``format`` metadata.

Tensors: ``errors.<type>`` (float32, lags x steps: the relative L1 change of that component type between steps
k apart, NaN where s < k) and ``schedule.<type>`` (uint8, steps: 1 = compute, 0 = reuse) built with the
calibration's ``alpha``. Metadata: ``format``, ``alpha`` and the model/run fields every calibration carries
(:func:`cache_core.calibration_files.model_meta`). Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration_files import (CalibrationError, meta_steps, model_fields, model_meta, read_file, register_format,
                                 write_file)
from ..config import check_range
from ..text import plain, shown
from .smoothcache import CALIBRATION_FORMAT as FORMAT
from .smoothcache import Errors, Schedule, build_schedule, check_errors, schedule_text


@dataclass
class SmoothCalibration:
    errors: Errors
    alpha: float
    family: str
    schedule: Schedule = field(default_factory=dict)  # built from errors and alpha when empty
    model_class: str = ""
    block_hash: str = ""
    weights_hint: str = ""
    sampler: str = "unknown"
    scheduler: str = "unknown"
    date: str = ""
    pack_version: str = ""
    source: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 10.0)  # NaN would build a schedule that reuses nothing, silently
        self.steps = check_errors(self.errors)
        if not self.schedule:
            self.schedule = build_schedule(self.errors, self.alpha)

    def summary(self) -> str:
        lines = [f"{plain(self.name or 'calibration', 120)} ({plain(self.family)}, {self.steps} steps, "
                 f"alpha {self.alpha:g}); "
                 f"mean error at lag 1: " + ", ".join(
                     f"{k} {_mean(rows[0]):.4f}" for k, rows in self.errors.items())]
        return "\n".join(lines + [schedule_text(self.schedule)])


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def save(path: str | os.PathLike, cal: SmoothCalibration) -> Path:
    tensors = {f"errors.{k}": torch.tensor(rows, dtype=torch.float32) for k, rows in cal.errors.items()}
    tensors.update({f"schedule.{k}": torch.tensor(v, dtype=torch.uint8) for k, v in cal.schedule.items()})
    meta = {"format": FORMAT, "alpha": repr(float(cal.alpha)), **model_meta(cal)}
    return write_file(path, tensors, meta)


def load(path: str | os.PathLike) -> SmoothCalibration:
    """Read and validate a SmoothCache calibration; any problem raises CalibrationError naming the file."""
    path = Path(path)
    where = f"SmoothCache calibration file {shown(path.name)}"  # a listed file's name may hold any character
    meta, tensors = read_file(path, where, FORMAT, "SmoothCache")
    steps = meta_steps(meta, where)
    errors = {k[len("errors."):]: t.float().tolist() for k, t in tensors.items()
              if k.startswith("errors.") and t.ndim == 2}
    schedule = {k[len("schedule."):]: [bool(x) for x in t.tolist()] for k, t in tensors.items()
                if k.startswith("schedule.") and t.ndim == 1}
    try:
        alpha = float(meta.get("alpha", ""))
        cal = SmoothCalibration(errors=errors, alpha=alpha, schedule=schedule, **model_fields(meta, path))
    except ValueError as e:
        raise CalibrationError(f"{where}: {e}") from e
    if cal.steps != steps or any(len(v) != steps for v in schedule.values()) or set(schedule) - set(errors):
        raise CalibrationError(f"{where}: errors/schedule do not match its {steps} steps and types")
    return cal


register_format(FORMAT, load)
