"""What every "<Method> Calibrate" node shares: the model check, the sampler it feeds, the file and the record.

A Calibrate node sits between the model and the KSampler: the sampler runs the full model while the method's
measuring policy records what the method needs, and at the end of each run the calibration is saved to the
calibration store (``calibration_store.py``). A method's Calibrate node subclasses :class:`CalibrateNode` and
gives its schema (:meth:`CalibrateNode.calibrate_schema`) and :meth:`CalibrateNode.measuring_policy`; the policy's
end-of-run callback builds the method's calibration and hands it to :meth:`CalibrationRun.save`, which writes the
file, logs it, sends it to the page (``EVENT``, if the node has one) and records it in the run log as
``{"method": "<display name without spaces>", "node_id": ..., "calibration": {...}}``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from comfy_api.latest import io

from ..cache_core import calibration_files
from ..cache_core.text import plain
from ..hosts.comfy import stats_server
from . import calibration_store
from .base import CacheNode
from .naming import CALIBRATE

log = logging.getLogger("dit_cache")


def sampler_settings(prompt: dict | None, node_id: str | None) -> tuple[str, str]:
    """sampler_name/scheduler of the KSampler fed by this node (through the hidden PROMPT input).

    They are not in transformer_options, so the graph is read: a sampler node whose "model" input is this
    node's output. Anything else (a custom sampler, a model routed through other nodes) gives "unknown". The
    values are the prompt's: anything but a short printable name comes back escaped (they reach log lines).
    """
    if not prompt or node_id is None:
        return "unknown", "unknown"
    found = set()
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        link = inputs.get("model")
        if isinstance(link, list) and link and str(link[0]) == str(node_id) and "sampler_name" in inputs:
            found.add((plain(inputs.get("sampler_name")), plain(inputs.get("scheduler", "unknown"))))
    return next(iter(found)) if len(found) == 1 else ("unknown", "unknown")


class CalibrationRun:
    """One calibrating model: what its files record about the model and the sampler, where they go, and the end
    of each sampling run (:meth:`finished`, :meth:`save`)."""

    def __init__(self, node: type[CalibrateNode], ident: calibration_store.ModelIdentity, prefix: str,
                 sampler: str, scheduler: str, node_id: str | None) -> None:
        self.node, self.ident, self.prefix = node, ident, prefix
        self.sampler, self.scheduler, self.node_id = sampler, scheduler, node_id
        self.label = node.label()
        self.saved: list[str] = []  # file names saved so far

    def finished(self, completed: bool) -> bool:
        """Whether a run's measurements may be saved (an interrupted run logs a warning: the run's own error is
        the one the prompt reports)."""
        if not completed:
            log.warning("[dit-cache] %s: the run was interrupted, nothing saved", self.label)
        return completed

    def nothing_saved(self, why: str) -> None:
        """A finished run that gave nothing to save: an error (the prompt fails), never a success with no file."""
        raise calibration_files.CalibrationError(f"{self.label}: {why}, nothing saved")

    def file_meta(self, source_note: str = "") -> dict[str, str]:
        """The fields every calibration carries about the model and the run (keyword arguments of the method's
        calibration class)."""
        return {"family": self.ident.layout.family, "model_class": self.ident.model_class,
                "block_hash": self.ident.block_hash, "weights_hint": self.ident.weights_hint,
                "sampler": self.sampler, "scheduler": self.scheduler, "date": calibration_files.utc_now(),
                "pack_version": calibration_files.pack_version(), "source": f"{self.label} (dit-cache){source_note}"}

    def save(self, cal: Any, write: Callable[[Path, Any], Any], details: dict[str, Any]) -> Path:
        """Write ``cal`` (with ``family``, ``steps``, ``name``, ``summary()``) with ``write`` under a new file name,
        log it, send it to the page and record it; ``details``: the method's fields of the record."""
        path = calibration_store.new_file_path(self.prefix, cal.family, cal.steps, self.ident.weights_hint)
        write(path, cal)
        cal.name = path.name
        self.saved.append(path.name)
        log.info("[dit-cache] %s: saved %s\n%s", self.label, path, cal.summary())
        # node_id: the calibrate node's graph id (the page draws the calibration on that node)
        payload = {"node_id": self.node_id, "node": self.label, "file": path.name, "folder": str(path.parent),
                   "family": cal.family, "steps": cal.steps, "sampler": self.sampler, "scheduler": self.scheduler,
                   **details}
        if self.node.EVENT is not None:
            # to the page that queued the prompt, like the statistics panel's runs (no-op outside a server)
            payload = stats_server.send_to_page(self.node.EVENT, payload)
        # in the run log under the prompt's client id: that page lists it again after a reload
        stats_server.record({"method": self.label.replace(" ", ""), "node_id": self.node_id, "calibration": payload})
        return path


class CalibrateNode(CacheNode):
    """Base of the "<Method> Calibrate" nodes: MODEL in, the model measuring while it samples out."""

    EVENT: str | None = None  # websocket event sent to the page with each saved calibration; None: not sent
    SAVES = "the calibration is"  # the node's text: "<SAVES> saved to <folder> when the sampler finishes"

    @classmethod
    def calibrate_schema(cls, node_id: str, display_name: str, description: str, prefix: str, prefix_tooltip: str,
                         inputs: tuple = ()) -> io.Schema:
        """A Calibrate node's schema: the model, ``filename_prefix`` (default ``prefix``), then ``inputs``; the
        hidden unique id and prompt (the sampler fed), never cached (each queued run calibrates: see
        :meth:`fingerprint_inputs`)."""
        return cls.schema(
            node_id=node_id, display_name=display_name, description=description,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to calibrate (the same one you will speed up)."),
                io.String.Input("filename_prefix", default=prefix, tooltip=prefix_tooltip),
                *inputs,
            ],
            output="The model, measuring while it samples (connect to the KSampler).",
            hidden=(io.Hidden.unique_id, io.Hidden.prompt), category=CALIBRATE,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs: Any) -> float:
        """NaN (never equal to itself): ComfyUI's execution cache never reuses a Calibrate node's output, so a
        calibrate workflow queued again with the same inputs samples and saves again (the sampler it feeds
        re-runs); without it, the second queue returned the first run's outputs and calibrated nothing."""
        return float("nan")

    @classmethod
    def measuring_policy(cls, run: CalibrationRun, **inputs: Any) -> Any:
        """The policy that computes everything and measures; at the end of each run it calls ``run.save``."""
        raise NotImplementedError

    @classmethod
    def execute(cls, model: Any, filename_prefix: str, **inputs: Any) -> io.NodeOutput:
        cls.reject_bad_inputs({"filename_prefix": filename_prefix, **inputs})
        ident = cls.identify(model, "nothing to calibrate")
        if ident is None:
            return io.NodeOutput(model)
        folder = calibration_store.save_dir()
        if folder.exists() and not folder.is_dir():  # found now, not after the whole run has sampled
            raise calibration_files.CalibrationError(
                f"{cls.label()}: the calibration folder {plain(str(folder), 300)} is a file, not a folder; move it "
                f"away (or give ComfyUI another 'magcache' folder in extra_model_paths.yaml)")
        node_id = cls.node_id()
        sampler, scheduler = sampler_settings(cls.hidden.prompt if cls.hidden is not None else None, node_id)
        run = CalibrationRun(cls, ident, filename_prefix, sampler, scheduler, node_id)
        policy = cls.measuring_policy(run, **inputs)
        text = (f"Calibrating {ident.layout.family} ({ident.model_class}); {cls.SAVES} saved to {folder} when the "
                f"sampler finishes (sampler {sampler}, scheduler {scheduler}).")
        return cls.attach(model, policy, ui={"text": [text]})
