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

import datetime as _dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

FORMAT = "dit-cache.magcache.v1"
PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESET_PREFIX = "preset: "
_REPO = Path(__file__).resolve().parents[1]


class CalibrationError(ValueError):
    """A calibration file or preset that cannot be used (the message names it)."""


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
        parts = [f"{k}: " + ", ".join(f"{r:.4f}" for r in v) for k, v in self.ratios.items()]
        return (f"{self.name or 'calibration'} ({self.family}, {self.steps} steps, {self.sampler}/{self.scheduler})\n"
                + "\n".join(parts))


def pack_version() -> str:
    """``version`` from the pack's pyproject.toml ("unknown" if it cannot be read)."""
    try:
        text = (_REPO / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return m.group(1) if m else "unknown"


def block_shape_hash(named_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    """A short hash of the transformer blocks' parameter names and shapes (same architecture = same hash)."""
    h = hashlib.sha256()
    for name, shape in sorted(named_shapes):
        h.update(f"{name}:{'x'.join(map(str, shape))};".encode())
    return h.hexdigest()[:16]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _check_ratios(where: str, ratios: dict[str, list[float]]) -> None:
    if not ratios:
        raise CalibrationError(f"{where}: no ratio curves")
    for label, values in ratios.items():
        if len(values) < 2:
            raise CalibrationError(f"{where}: stream {label!r} has {len(values)} ratios, need at least 2")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
            raise CalibrationError(f"{where}: stream {label!r} has non-finite or non-positive ratios")


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write a calibration ``.safetensors`` file atomically (parent folders are created)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never leave a half-written calibration under the final name
    return path


def read_file(path: str | os.PathLike, where: str, fmt: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a calibration file of format ``fmt``; CalibrationError (``where`` first) if the
    file is missing, unreadable, of another format or names no model family."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{where} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CalibrationError(f"{where} is corrupt or truncated ({type(e).__name__}: {e})") from e
    if meta.get("format") != fmt:
        raise CalibrationError(f"{where} is not a dit-cache {what} calibration (format {meta.get('format')!r})")
    if not meta.get("family"):
        raise CalibrationError(f"{where}: metadata has no model family")
    return meta, tensors


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` metadata of a ``.safetensors`` file (None if unreadable): reads the header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:
        return None


def model_meta(family: str, model_class: str, block_hash: str, weights_hint: str, steps: int, sampler: str,
               scheduler: str, date: str, version: str, source: str) -> dict[str, str]:
    """The metadata every calibration file carries about its model and run."""
    return {"family": family, "model_class": model_class, "block_hash": block_hash, "weights_hint": weights_hint,
            "steps": str(steps), "sampler": sampler, "scheduler": scheduler, "date": date or utc_now(),
            "pack_version": version or pack_version(), "source": source}


def meta_steps(meta: dict[str, str], where: str) -> int:
    try:
        return int(meta.get("steps", ""))
    except ValueError:
        raise CalibrationError(f"{where}: metadata 'steps' is {meta.get('steps')!r}") from None


def save(path: str | os.PathLike, cal: Calibration) -> Path:
    """Write ``cal`` to ``path`` (a new file; parent folders are created)."""
    _check_ratios(str(path), cal.ratios)
    tensors = {f"ratios.{k}": torch.tensor(v, dtype=torch.float32) for k, v in cal.ratios.items()}
    if cal.sigmas:
        tensors["sigmas"] = torch.tensor(cal.sigmas, dtype=torch.float32)
    meta = {"format": FORMAT, **model_meta(cal.family, cal.model_class, cal.block_hash, cal.weights_hint, cal.steps,
                                           cal.sampler, cal.scheduler, cal.date, cal.pack_version, cal.source),
            "streams": ",".join(cal.ratios)}
    return write_file(path, tensors, meta)


def load(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration file; any problem raises :class:`CalibrationError` naming the file."""
    path = Path(path)
    where = f"MagCache calibration file '{path}'"
    meta, tensors = read_file(path, where, FORMAT, "MagCache")
    ratios = {k[len("ratios."):]: t.float().tolist() for k, t in tensors.items()
              if k.startswith("ratios.") and t.ndim == 1}
    _check_ratios(where, ratios)
    steps = meta_steps(meta, where)
    if any(len(v) != steps for v in ratios.values()):
        raise CalibrationError(f"{where}: ratio curves of lengths {[len(v) for v in ratios.values()]} "
                               f"do not match steps={steps}")
    sigmas = tensors["sigmas"].float().tolist() if "sigmas" in tensors else []
    return Calibration(
        ratios=ratios, family=meta["family"], steps=steps, model_class=meta.get("model_class", ""),
        block_hash=meta.get("block_hash", ""), weights_hint=meta.get("weights_hint", ""),
        sampler=meta.get("sampler", "unknown"), scheduler=meta.get("scheduler", "unknown"), sigmas=sigmas,
        date=meta.get("date", ""), pack_version=meta.get("pack_version", ""), source=meta.get("source", ""),
        name=path.name,
    )


# ------------------------------------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Calibration:
    path = PRESET_DIR / f"{name}.json"
    where = f"MagCache preset {name!r}"
    if not path.is_file():
        raise CalibrationError(f"{where} does not exist (available: {', '.join(preset_names())})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ratios = {str(k): [float(x) for x in v] for k, v in data["ratios"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise CalibrationError(f"{where} ({path}) is malformed: {e}") from e
    _check_ratios(where, ratios)
    steps = len(next(iter(ratios.values())))
    return Calibration(ratios=ratios, family=data["family"], steps=steps, model_class=data.get("model", ""),
                       sampler=data.get("sampler", "unknown"), scheduler=data.get("scheduler", "unknown"),
                       source=data.get("source", ""), name=PRESET_PREFIX + name)


def check_model(cal: Any, family: str, block_hash: str, method: str = "MagCache") -> None:
    """Raise ValueError (before sampling) if calibration ``cal`` (with ``name``, ``family``, ``model_class``,
    ``block_hash``) was made for another model family or block shapes."""
    if cal.family != family:
        raise CalibrationError(f"{method}: '{cal.name}' was calibrated for a {cal.family} model, this model is "
                               f"{family}. Pick a calibration of this family or run {method} Calibrate.")
    if cal.block_hash and cal.block_hash != block_hash:
        raise CalibrationError(f"{method}: '{cal.name}' was calibrated on a {cal.model_class or cal.family} model "
                               f"with other block shapes (hash {cal.block_hash}, this model {block_hash}). "
                               f"Run {method} Calibrate on this model.")
