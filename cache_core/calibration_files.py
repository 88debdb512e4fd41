"""What every calibration file shares, whatever its method: the ``.safetensors`` container written atomically,
the ``format`` header that tells methods' files apart, the model/run metadata, and the model check.

The method-specific formats live beside their methods (``methods/magcache_calibration.py``,
``methods/smoothcache_calibration.py``). Nothing here imports ComfyUI.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .text import plain, shown

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


MAX_HEADER = 16 * 1024 * 1024  # bytes of a .safetensors JSON header this reader accepts


def _metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file, from its header (8-byte little-endian length, JSON).
    Read here rather than by safetensors' ``safe_open``, which cannot open a path that is not UTF-8 (a file name
    ComfyUI lists with a lone surrogate). ValueError / OSError if it is not a readable header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("no header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            raise ValueError("header too large")
        header = json.loads(f.read(n))
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("malformed header")
    return meta


def read_file(path: str | os.PathLike, where: str, fmt: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a calibration file of format ``fmt``; CalibrationError (``where`` first) if the
    file is missing, unreadable, of another format or names no model family. Only a file whose header says
    ``fmt`` is read whole (calibrations are small; a model file put in the folder by mistake is not loaded)."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{where} does not exist")
    try:
        meta = _metadata(path)
    except (OSError, ValueError) as e:
        # the error's own text may quote the file's bytes: only its type is named (the log has the traceback)
        raise CalibrationError(f"{where} is corrupt or truncated ({type(e).__name__})") from e
    found = meta.get("format")
    if found != fmt:
        # a format this pack knows is named; anything else is the file's own text and is not repeated
        kind = f"a {found} file" if found in _LOADERS else "another kind of file"
        raise CalibrationError(f"{where} is not a dit-cache {what} calibration ({kind})")
    if not meta.get("family"):
        raise CalibrationError(f"{where}: metadata has no model family")
    try:
        tensors = load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CalibrationError(f"{where} is corrupt or truncated ({type(e).__name__})") from e
    return meta, tensors


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` metadata of a ``.safetensors`` file (None if unreadable): reads the header only."""
    try:
        return _metadata(Path(path)).get("format")
    except (OSError, ValueError):
        return None


def model_meta(cal: Any) -> dict[str, str]:
    """The metadata every calibration file carries about its model and run, from a calibration object with
    ``family``, ``model_class``, ``block_hash``, ``weights_hint``, ``steps``, ``sampler``, ``scheduler``, ``date``,
    ``pack_version`` and ``source`` (every format's dataclass has them)."""
    return {"family": cal.family, "model_class": cal.model_class, "block_hash": cal.block_hash,
            "weights_hint": cal.weights_hint, "steps": str(cal.steps), "sampler": cal.sampler,
            "scheduler": cal.scheduler, "date": cal.date or utc_now(),
            "pack_version": cal.pack_version or pack_version(), "source": cal.source}


def model_fields(meta: dict[str, str], path: Path) -> dict[str, str]:
    """The calibration object's fields that :func:`model_meta` wrote (all but ``steps``, which
    :func:`meta_steps` reads and checks), read back from a file's metadata, and ``name`` (the file's)."""
    return {"family": meta["family"], "model_class": meta.get("model_class", ""),
            "block_hash": meta.get("block_hash", ""), "weights_hint": meta.get("weights_hint", ""),
            "sampler": meta.get("sampler", "unknown"), "scheduler": meta.get("scheduler", "unknown"),
            "date": meta.get("date", ""), "pack_version": meta.get("pack_version", ""),
            "source": meta.get("source", ""), "name": path.name}


def meta_steps(meta: dict[str, str], where: str) -> int:
    try:
        return int(meta.get("steps", ""))
    except ValueError:
        raise CalibrationError(f"{where}: metadata 'steps' is not a whole number") from None


def check_model(cal: Any, family: str, block_hash: str, method: str = "MagCache") -> None:
    """Raise ValueError (before sampling) if calibration ``cal`` (with ``name``, ``family``, ``model_class``,
    ``block_hash``) was made for another model family or block shapes."""
    # the name is a listed file's (any characters) and the fields are the file's metadata: shown escaped
    if cal.family != family:
        raise CalibrationError(f"{method}: {shown(cal.name)} was calibrated for a {plain(cal.family)} model, this "
                               f"model is {family}. Pick a calibration of this family or run {method} Calibrate.")
    if cal.block_hash and cal.block_hash != block_hash:
        raise CalibrationError(f"{method}: {shown(cal.name)} was calibrated on a "
                               f"{plain(cal.model_class or cal.family)} model with other block shapes (hash "
                               f"{plain(cal.block_hash)}, this model {block_hash}). Run {method} Calibrate on this "
                               f"model.")


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
