"""Step-schedule calibrations: the reduced block-stack residuals of one fully computed run ("Step Schedule
Calibrate"), from which every skipped step's error is computed offline (``cache_core/schedule_dp.py``).

**Reduction (the memory bound).** Each computed call's whole-stack residual of one CFG stream (rows x tokens x
hidden) is flattened to ``tokens x hidden``; at most :data:`MAX_TOKENS` tokens are kept, evenly spaced, and the
hidden dimension is projected to :data:`PROJ_DIM` by a fixed Gaussian matrix (seed 0, scaled by
``1/sqrt(PROJ_DIM)``: distances are preserved in expectation, Johnson-Lindenstrauss) when it is larger. So a
step keeps at most ``MAX_TOKENS * PROJ_DIM`` = 4096 float32 values (16 KiB) per stream, whatever the model or
resolution: a 50-step run with two CFG streams stores at most 1.6 MiB, in memory while calibrating and on disk.
The reduction is linear, so a forecast (a linear combination of computed values) of the reduced features is the
reduction of the forecast, and the error table measures what the apply node would produce.

A file holds ``features.<stream>`` (float32, steps x D), ``call_sigmas.<stream>`` (each call's sigma, NaN where
the host gave none), ``sigmas`` (the run's schedule, steps + 1 values) and the metadata every calibration carries
(``calibration_files.model_meta``), with ``format`` :data:`FORMAT`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration_files import (CalibrationError, check_model, meta_steps, model_fields, model_meta,  # noqa: F401
                                 read_file, register_format, write_file)
from ..text import plain, shown

FORMAT = "dit-cache.stepschedule.v1"
MAX_TOKENS = 256
PROJ_DIM = 16

_projections: dict[int, torch.Tensor] = {}


def _projection(hidden: int) -> torch.Tensor:
    if hidden not in _projections:
        g = torch.Generator().manual_seed(0)
        _projections[hidden] = torch.randn((hidden, PROJ_DIM), generator=g) / math.sqrt(PROJ_DIM)
    return _projections[hidden]


def reduce_feature(residual: torch.Tensor) -> torch.Tensor:
    """The bounded, linear reduction of one stream's residual (see the module docstring): float32, CPU, 1-D."""
    x = residual.detach()
    x = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1, 1)
    if x.shape[0] > MAX_TOKENS:  # tokens picked before the float copy: never a float32 copy of the whole residual
        idx = torch.linspace(0, x.shape[0] - 1, MAX_TOKENS, device=x.device).round().long()
        x = x.index_select(0, idx)
    x = x.float()
    if x.shape[1] > PROJ_DIM:
        x = x @ _projection(x.shape[1]).to(x.device)
    return x.reshape(-1).cpu()


@dataclass
class StepCalibration:
    features: dict[str, torch.Tensor]  # stream -> (steps, D) float32
    call_sigmas: dict[str, list[float | None]]
    family: str
    steps: int
    model_class: str = ""
    block_hash: str = ""
    weights_hint: str = ""
    sampler: str = "unknown"
    scheduler: str = "unknown"
    sigmas: list[float] = field(default_factory=list)
    date: str = ""
    pack_version: str = ""
    source: str = ""
    name: str = ""

    def summary(self) -> str:
        dims = ", ".join(f"{plain(k)}: {tuple(v.shape)}" for k, v in self.features.items())
        return (f"{plain(self.name or 'calibration', 120)} ({plain(self.family)}, {self.steps} steps, "
                f"{plain(self.sampler)}/{plain(self.scheduler)}); features {dims}")


def _check(where: str, cal: StepCalibration) -> None:
    if not cal.features:
        raise CalibrationError(f"{where}: no streams")
    for label, f in cal.features.items():
        if f.ndim != 2 or f.shape[0] != cal.steps or cal.steps < 2:
            raise CalibrationError(f"{where}: stream {shown(label)} has features of shape {tuple(f.shape)}, "
                                   f"need ({cal.steps}, D) with at least 2 steps")
        if not torch.isfinite(f).all():
            raise CalibrationError(f"{where}: stream {shown(label)} has non-finite features")


def save(path: str | os.PathLike, cal: StepCalibration) -> Path:
    _check(f"Step schedule calibration file {shown(Path(path).name)}", cal)
    tensors = {f"features.{k}": v.float().contiguous() for k, v in cal.features.items()}
    for k, v in cal.call_sigmas.items():
        tensors[f"call_sigmas.{k}"] = torch.tensor([math.nan if s is None else s for s in v], dtype=torch.float32)
    if cal.sigmas:
        tensors["sigmas"] = torch.tensor(cal.sigmas, dtype=torch.float32)
    meta = {"format": FORMAT, **model_meta(cal),
            "streams": ",".join(cal.features)}
    return write_file(path, tensors, meta)


def load(path: str | os.PathLike) -> StepCalibration:
    path = Path(path)
    where = f"Step schedule calibration file {shown(path.name)}"
    meta, tensors = read_file(path, where, FORMAT, "Step Schedule")
    features = {k[len("features."):]: t.float() for k, t in tensors.items() if k.startswith("features.")}
    call_sigmas = {k[len("call_sigmas."):]: [None if math.isnan(x) else x for x in t.float().tolist()]
                   for k, t in tensors.items() if k.startswith("call_sigmas.")}
    cal = StepCalibration(
        features=features, call_sigmas=call_sigmas, steps=meta_steps(meta, where),
        sigmas=tensors["sigmas"].float().tolist() if "sigmas" in tensors else [], **model_fields(meta, path))
    _check(where, cal)
    return cal


register_format(FORMAT, load)
