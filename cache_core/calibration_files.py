"""What every calibration file shares, whatever its method: the ``.safetensors`` container written atomically,
the ``format`` header that tells methods' files apart, the model/run metadata, and the model check.

The method-specific formats live beside their methods (``methods/magcache_calibration.py``,
``methods/smoothcache_calibration.py``). Nothing here imports ComfyUI.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

_REPO = Path(__file__).resolve().parents[1]


class CalibrationError(ValueError):
    """A calibration file or preset that cannot be used (the message names it)."""


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


# ------------------------------------------------------------------------------------------------ formats
# {format: loader}: each method's calibration module registers its format here (methods/*_calibration.py), so a
# calibration store lists and loads every method's files without knowing the methods by name.
_LOADERS: dict[str, Callable[[str | os.PathLike], Any]] = {}


def register_format(fmt: str, loader: Callable[[str | os.PathLike], Any]) -> None:
    """Declare a calibration file format and the function that reads (and validates) its files."""
    _LOADERS[fmt] = loader


def loader(fmt: str) -> Callable[[str | os.PathLike], Any]:
    """The loader of format ``fmt`` (KeyError naming the known formats if it is not registered)."""
    try:
        return _LOADERS[fmt]
    except KeyError:
        raise KeyError(f"unknown calibration format {fmt!r}; known: {', '.join(sorted(_LOADERS))}") from None


def formats() -> tuple[str, ...]:
    return tuple(_LOADERS)
