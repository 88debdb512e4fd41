"""Where calibrations live in ComfyUI: a ``magcache`` model folder registered with ``folder_paths``.

Every calibrated method's files share it (the folder is named after the first one, MagCache); they are told
apart by the ``format`` in their header, and a method's node lists the files of its own format
(:func:`choices`) through the format map of ``cache_core/calibration_files.py``: the store knows no format by
name, so a new calibrated method adds nothing here.

Default: ``<ComfyUI>/models/magcache``. An ``extra_model_paths.yaml`` entry ``magcache: <path>`` (read by
ComfyUI before custom nodes load) comes first, so new calibrations are saved there. The folder is listed afresh
each time a node's schema is requested, so a new file appears in the dropdowns without restarting ComfyUI.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import folder_paths

from ..cache_core import calibration_files
from ..cache_core.layout import COMFY_LAYOUTS, BlockLayout, layout_for_module
from ..cache_core.registry import load_methods
from ..cache_core.text import shown

log = logging.getLogger("dit_cache")

FOLDER = "magcache"
EXTENSION = ".safetensors"


def register() -> None:
    """Register the folder (idempotent); keeps paths that extra_model_paths.yaml gave it first."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, default)  # appended after the YAML's paths
        folder_paths.folder_names_and_paths[FOLDER][1].add(EXTENSION)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {EXTENSION})


def save_dir() -> Path:
    register()
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def _files() -> list[str]:
    register()
    try:
        listed = folder_paths.get_filename_list(FOLDER)
    except FileNotFoundError:
        # a calibration folder was removed while ComfyUI runs: its cached listing points at it; list afresh
        getattr(folder_paths, "filename_list_cache", {}).pop(FOLDER, None)
        listed = folder_paths.get_filename_list(FOLDER)
    return [f for f in listed if f.endswith(EXTENSION)]


_formats: dict[tuple[str, int, int], str | None] = {}  # (path, mtime_ns, size) -> format metadata


def _format_of(name: str) -> str | None:
    """A file's ``format`` metadata, read once per file version (the dropdowns ask on every /object_info)."""
    path = folder_paths.get_full_path(FOLDER, name)
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _formats:
        _formats[key] = calibration_files.file_format(path)
    return _formats[key]


def choices(fmt: str) -> list[str]:
    """Dropdown entries of a method whose files have format ``fmt``: those files, and the files no registered
    format claims (unreadable, truncated or foreign ones stay listed, so picking one gives an error naming it)."""
    load_methods()  # every method's calibration module has registered its format
    known = calibration_files.formats()
    return [f for f in _files() if (found := _format_of(f)) == fmt or found not in known]


def load(choice: str, fmt: str, method: str) -> Any:
    """The calibration of format ``fmt`` a dropdown entry names, read by that format's loader (its ``name`` set
    to the entry). Only a file listed in the calibration folders is opened, never a path: any other value gets
    the same CalibrationError (a ValueError), whether or not something of that name exists; an unusable listed
    file gets one naming it."""
    if not isinstance(choice, str) or choice not in _files():
        raise calibration_files.CalibrationError(f"{method} calibration {shown(choice)} is not one of the listed "
                                                 f"calibrations")
    path = folder_paths.get_full_path(FOLDER, choice)
    if path is None:  # removed since it was listed
        raise calibration_files.CalibrationError(f"{method} calibration file {shown(choice)} no longer exists")
    cal = calibration_files.loader(fmt)(path)
    cal.name = choice
    return cal


class ModelIdentity:
    """What a calibration records about, and is checked against, a model."""

    def __init__(self, layout: BlockLayout, model_class: str, block_hash: str, weights_hint: str) -> None:
        self.layout, self.model_class, self.block_hash, self.weights_hint = layout, model_class, block_hash, weights_hint


def identify(model: Any) -> ModelIdentity | None:
    """The layout, class, block-shape hash and a short weights fingerprint of a ModelPatcher's DiT (or None)."""
    dm = model.get_model_object("diffusion_model")
    layout = layout_for_module(dm, COMFY_LAYOUTS)
    if layout is None:
        return None
    shapes = [(f"{seg.attr}.{n}", tuple(p.shape)) for seg in layout.segments
              for n, p in getattr(dm, seg.attr).named_parameters()]
    first = next(getattr(dm, layout.segments[0].attr).parameters())
    sample = first.detach().reshape(-1)[:4096].float().cpu().contiguous()
    hint = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:8]
    return ModelIdentity(layout, type(dm).__name__, calibration_files.block_shape_hash(shapes), hint)


def new_file_path(prefix: str, family: str, steps: int, hint: str, extension: str = EXTENSION) -> Path:
    """A free file name ``<prefix>_<family>_<steps>steps_<weights hint>_<counter>.safetensors`` (or another
    ``extension``: DiT Cache Tune's ``.json``): two models of one family (Wan 2.2 high/low noise) differ in the
    hint, repeated runs in the counter."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix).strip("._") or "calibration"
    folder = save_dir()
    stem = f"{safe}_{family}_{steps}steps_{hint}"
    n = 1
    while (folder / f"{stem}_{n:05d}{extension}").exists() or (folder / f"{stem}_{n:05d}{extension}.part").exists():
        n += 1
    return folder / f"{stem}_{n:05d}{extension}"


TUNE_EXTENSION = ".json"


def tune_files() -> list[Path]:
    """DiT Cache Tune's files (``*.json`` directly in the calibration folders; read by ``cache_core/tune.py``),
    newest first. Only these folders' own entries are listed: a name is never turned into a path."""
    register()
    found: list[tuple[int, Path]] = []
    for folder in folder_paths.get_folder_paths(FOLDER):
        try:
            for p in Path(folder).iterdir():
                if p.suffix == TUNE_EXTENSION and p.is_file():
                    found.append((p.stat().st_mtime_ns, p))
        except OSError:  # a folder or file removed meanwhile
            continue
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


register()
