"""MagCache calibrations: ``.safetensors`` files written by "MagCache Calibrate", and the shipped presets.

A calibration file holds one float32 tensor ``ratios.<stream>`` per CFG stream (per-step magnitude ratios,
first value 1.0), ``sigmas`` (the calibrated run's schedule, steps + 1 values) and string metadata:
``format``, ``family`` (the block layout's family), ``model_class``, ``block_hash`` (:func:`block_shape_hash`),
``weights_hint`` (tells two models of the same shapes apart, e.g. Wan 2.2 high/low noise), ``steps``,
``sampler``, ``scheduler``, ``date`` (UTC, ISO 8601), ``pack_version``, ``source``.

Presets (``cache_core/presets/*.json``) are published ratios with their source cited; they have no block hash
(they were measured on the full-size model), so only the family is checked against the model.
Nothing here imports ComfyUI.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration_files import (CalibrationError, block_shape_hash, check_model, file_format, meta_steps,  # noqa: F401
                                 model_fields,
                                 model_meta, pack_version, read_file, register_format, utc_now, write_file)
from ..text import plain, shown

FORMAT = "dit-cache.magcache.v1"
PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
PRESET_PREFIX = "preset: "


@dataclass
class Calibration:
    ratios: dict[str, list[float]]
    family: str
    steps: int
    model_class: str = ""
    block_hash: str = ""  # "" = not tied to block shapes (published presets)
    weights_hint: str = ""
    sampler: str = "unknown"
    scheduler: str = "unknown"
    sigmas: list[float] = field(default_factory=list)
    date: str = ""
    pack_version: str = ""
    source: str = ""
    name: str = ""  # file name or preset name it was read from

    def summary(self) -> str:
        parts = [f"{plain(k)}: " + ", ".join(f"{r:.4f}" for r in v) for k, v in self.ratios.items()]
        return (f"{plain(self.name or 'calibration', 120)} ({plain(self.family)}, {self.steps} steps, "
                f"{plain(self.sampler)}/{plain(self.scheduler)})\n"
                + "\n".join(parts))


def _check_ratios(where: str, ratios: dict[str, list[float]]) -> None:
    if not ratios:
        raise CalibrationError(f"{where}: no ratio curves")
    for label, values in ratios.items():
        if len(values) < 2:
            raise CalibrationError(f"{where}: stream {shown(label)} has {len(values)} ratios, need at least 2")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
            raise CalibrationError(f"{where}: stream {shown(label)} has non-finite or non-positive ratios")


def save(path: str | os.PathLike, cal: Calibration) -> Path:
    """Write ``cal`` to ``path`` (a new file; parent folders are created)."""
    _check_ratios(f"MagCache calibration file {shown(Path(path).name)}", cal.ratios)
    tensors = {f"ratios.{k}": torch.tensor(v, dtype=torch.float32) for k, v in cal.ratios.items()}
    if cal.sigmas:
        tensors["sigmas"] = torch.tensor(cal.sigmas, dtype=torch.float32)
    meta = {"format": FORMAT, **model_meta(cal),
            "streams": ",".join(cal.ratios)}
    return write_file(path, tensors, meta)


def load(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration file; any problem raises :class:`CalibrationError` naming the file."""
    path = Path(path)
    where = f"MagCache calibration file {shown(path.name)}"  # a listed file's name may hold any character
    meta, tensors = read_file(path, where, FORMAT, "MagCache")
    ratios = {k[len("ratios."):]: t.float().tolist() for k, t in tensors.items()
              if k.startswith("ratios.") and t.ndim == 1}
    _check_ratios(where, ratios)
    steps = meta_steps(meta, where)
    if any(len(v) != steps for v in ratios.values()):
        raise CalibrationError(f"{where}: ratio curves of lengths {[len(v) for v in ratios.values()]} "
                               f"do not match steps={steps}")
    sigmas = tensors["sigmas"].float().tolist() if "sigmas" in tensors else []
    return Calibration(ratios=ratios, steps=steps, sigmas=sigmas, **model_fields(meta, path))


# ------------------------------------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Calibration:
    """The built-in preset ``name`` (one of :func:`preset_names`: never a path). Any other name gets the same
    CalibrationError, whatever exists on disk; a malformed preset's message quotes nothing of the file."""
    where = f"MagCache preset {shown(name)}"
    if not isinstance(name, str) or name not in preset_names():
        raise CalibrationError(f"{where} does not exist (available: {', '.join(preset_names())})")
    path = PRESET_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ratios = {str(k): [float(x) for x in v] for k, v in data["ratios"].items()}
        family = str(data["family"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CalibrationError(f"{where} is malformed ({type(e).__name__})") from e
    _check_ratios(where, ratios)
    steps = len(next(iter(ratios.values())))
    return Calibration(ratios=ratios, family=family, steps=steps, model_class=data.get("model", ""),
                       sampler=data.get("sampler", "unknown"), scheduler=data.get("scheduler", "unknown"),
                       source=data.get("source", ""), name=PRESET_PREFIX + name)


register_format(FORMAT, load)
