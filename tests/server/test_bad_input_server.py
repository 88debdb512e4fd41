"""Bad input through a real ComfyUI server (issue 21): every probe goes over ``POST /prompt`` the way any client
could send it, and the server must answer with a clear error and keep running prompts afterwards.

- D1: lone surrogates, control characters and very long strings in every text and choice input of every node,
  and calibration files whose names are not UTF-8: never a crashed prompt worker (ComfyUI's console wrapper
  raises on a lone surrogate), messages escaped, the next prompt runs.
- D2: a calibration choice is a listed name, never a path: one message for every unknown name, nothing read.
- D3: a calibration that cannot be saved is an error, before sampling where it can be known then.
- D4/D5: out-of-range, NaN and infinite numbers are rejected at /prompt (HTTP 400), linked ones before sampling.
- D7: wrong types are named in plain words.

The run log's per-client serving (D6) is in test_server.py.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import _graph, _run

from dit_cache.cache_core.text import shown

pytestmark = pytest.mark.server

MAG = "DitCache.ApplyMagCache"
SMOOTH = "DitCache.ApplySmoothCache"
SURROGATE = "x\udcff.safetensors"
CONTROL = "a\x1b[31m\r\n\x00\x07b"
LONG = "L" * 100_000
BAD_TEXT = {"surrogate": SURROGATE, "control": CONTROL, "long": LONG}
QUICK = 2  # sampler steps of the probes that are accepted and run


# Nodes whose graph these probes cannot build from a model alone (DiT Cache Tune also takes conditioning and a
# latent, like a KSampler): their bad input is tested in tests/comfy/test_tune_comfy.py.
NOT_PROBED = {"DitCache.Tune"}


def _nodes(server: Server) -> dict[str, dict]:
    nodes = {k: v for k, v in server.get("/object_info").items() if k.startswith("DitCache.")}
    linked = {k for k, v in nodes.items()
              if any(spec[0] in ("CONDITIONING", "LATENT") for spec in v["input"]["required"].values())}
    assert linked == NOT_PROBED, f"nodes taking more than a model: {sorted(linked)}"
    return {k: v for k, v in nodes.items() if k not in NOT_PROBED}


def _defaults(info: dict) -> dict:
    """The node's inputs at their defaults (the model linked to the loader)."""
    out = {}
    for name, spec in info["input"]["required"].items():
        typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        if typ == "MODEL":
            out[name] = ["1", 0]
        elif typ == "COMBO":
            out[name] = opts.get("default") or (opts.get("options") or [""])[0]
        else:
            out[name] = opts["default"]
    return out


def _post(server: Server, node: str, inputs: dict, steps: int = QUICK, extra: dict | None = None):
    prompt = _graph({"class_type": node, "inputs": inputs}, steps=steps)
    prompt.update(extra or {})
    return server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})


def _finish(server: Server, body: dict, timeout: float = 60) -> dict:
    return server.wait_for_history(body["prompt_id"], timeout=timeout)


def _errors(body: dict, node: str = "2") -> list[str]:
    """The details of every error the /prompt answer gives for ``node``."""
    return [e.get("details", "") for e in body.get("node_errors", {}).get(node, {}).get("errors", [])]


def _execution_error(entry: dict) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]["exception_message"].strip()


def _still_runs(server: Server) -> None:
    """A normal cached prompt runs to the end (the prompt worker is alive) and nothing failed to log."""
    inputs = {"model": ["1", 0], "threshold": 0.1, "start_percent": 0.0, "end_percent": 1.0,
              "max_consecutive_skips": -1, "warmup_steps": 0}
    status, body = _post(server, "DitCache.ApplyFirstBlockCache", inputs)
    assert status == 200, body
    entry = _finish(server, body)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    log = server.log()
    assert "UnicodeEncodeError" not in log and "--- Logging error ---" not in log, server.log_tail(80)


def _models(server: Server) -> Path:
    return server.output_dir.parent / "models"  # the server's --base-directory (support/comfy_server.py)


# ------------------------------------------------------------------------------------------------ D1
def test_bad_text_in_every_text_and_choice_input_of_every_node(server: Server):
    """Every STRING and COMBO input of every dit-cache node, with each bad text: a 400 naming the input with the
    value escaped and bounded, or (a file name prefix: any text is made a safe file name) a run; afterwards a
    normal prompt still runs."""
    probed = []
    for node, info in _nodes(server).items():
        base = _defaults(info)
        for name, spec in info["input"]["required"].items():
            if spec[0] not in ("STRING", "COMBO"):
                continue
            for kind, value in BAD_TEXT.items():
                probed.append((node, name, kind))
                status, body = _post(server, node, {**base, name: value})
                if status == 200:  # accepted: the text is fine where it goes; the prompt must finish
                    assert spec[0] == "STRING" and kind != "long", (node, name, kind)
                    entry = _finish(server, body)
                    assert entry["status"]["status_str"] in ("success", "error"), entry["status"]
                    continue
                assert status == 400, (node, name, kind, body)
                # "<input> - <message>", once per input the node's validate_inputs names: one message, made of
                # "; "-joined parts, one per bad input: the probed one, and at most a calibration choice left at
                # its default where none is listed yet (Apply StepSchedule before any calibration run)
                messages = {d.split(" - ", 1)[1] for d in _errors(body)}
                assert len(messages) == 1, messages
                (message,) = messages
                message.encode("ascii")  # escaped: nothing a console can choke on
                parts = message.split("; ")
                probed_part = [m for m in parts if m.startswith(name)]
                assert probed_part and all(m.startswith(name) or "none are listed yet" in m for m in parts), message
                assert len(message) < 2000, message
                assert shown(value) in probed_part[0] or f"{len(value)} characters long" in probed_part[0], message
    assert {n for n, _, _ in probed} >= {MAG, SMOOTH, "DitCache.MagCacheCalibrate", "DitCache.SmoothCacheCalibrate",
                                         "DitCache.ApplyTaylorSeer", "DitCache.ApplyTeaCache"}
    _still_runs(server)


def test_calibration_files_with_names_that_are_not_utf8(server: Server):
    """A calibration whose file name is not UTF-8 (listed by ComfyUI with a lone surrogate) is usable and named
    escaped in the log; an unreadable one gives an error naming it escaped; prompts keep running."""
    folder = _models(server) / "magcache"
    entry, log = _run(server, _graph({"class_type": "DitCache.MagCacheCalibrate",
                                      "inputs": {"model": ["1", 0], "filename_prefix": "nonutf8"}}, steps=6))
    saved = Path(log.split("MagCache Calibrate: saved ", 1)[1].split("\n", 1)[0].strip())
    good = Path(os.fsdecode(bytes(folder) + b"/good\xff.safetensors"))  # as ComfyUI lists it: "good\udcff..."
    bad = Path(os.fsdecode(bytes(folder) + b"/bad\xfe.safetensors"))
    try:
        shutil.copy(saved, good)
        bad.write_bytes(b"{ not a safetensors file")
        spec = server.get(f"/object_info/{MAG}")[MAG]["input"]["required"]["calibration"]
        good_name, bad_name = "good\udcff.safetensors", "bad\udcfe.safetensors"
        assert good_name in spec[1]["options"] and bad_name in spec[1]["options"]

        inputs = {**_defaults(server.get(f"/object_info/{MAG}")[MAG]), "calibration": good_name, "threshold": 0.3}
        status, body = _post(server, MAG, inputs, steps=6)
        assert status == 200, body
        entry = _finish(server, body)
        assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
        assert f"Apply MagCache: using {shown(good_name)}" in server.log()

        status, body = _post(server, SMOOTH, {"model": ["1", 0], "calibration": bad_name, "alpha": -1.0})
        assert status == 200, body
        message = _execution_error(_finish(server, body))
        assert f"SmoothCache calibration file {shown(bad_name)} is corrupt or truncated" in message
        message.encode("ascii")
        _still_runs(server)
    finally:
        for p in (saved, good, bad):
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ D2
def test_calibration_choices_are_listed_names_never_paths(server: Server, tmp_path: Path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"ratios": {"cond": ["TOPSECRET", 1.0]}, "family": "wan"}', encoding="utf-8")
    base = _defaults(server.get(f"/object_info/{MAG}")[MAG])
    presets = Path(__file__).resolve().parents[2] / "cache_core" / "presets"
    up = "../" * len(presets.parts)
    values = [f"preset: {secret.with_suffix('')}", f"preset: {up}{str(secret.with_suffix(''))[1:]}",
              f"preset: {tmp_path / 'missing'}", str(secret), "preset: nope", "../../../etc/passwd"]
    for node, extra in ((MAG, base), (SMOOTH, {"model": ["1", 0], "alpha": -1.0})):
        for value in values:
            status, body = _post(server, node, {**extra, "calibration": value})
            assert status == 400, (node, value, body)
            assert "TOPSECRET" not in json.dumps(body)
            # one message whatever exists on disk (a file, a missing one, a preset name): only the value differs
            (message,) = {d.split(" - ", 1)[1] for d in _errors(body)}
            assert message.startswith(f"calibration {shown(value)} is not one of the listed choices"), message
    _still_runs(server)


# ------------------------------------------------------------------------------------------------ D3
def test_a_calibration_that_cannot_be_saved_is_an_error(server: Server):
    # a file name prefix too long for a file name: rejected before anything runs
    status, body = _post(server, "DitCache.MagCacheCalibrate", {"model": ["1", 0], "filename_prefix": "a" * 300})
    assert status == 400 and "filename_prefix is 300 characters long, at most 100" in _errors(body)[0], body

    # one step: the calibration cannot have a curve; an error before the model runs, no file
    folder = _models(server) / "magcache"
    before = set(folder.iterdir()) if folder.is_dir() else set()
    for node, extra, what in (("DitCache.MagCacheCalibrate", {}, "MagCache"),
                              ("DitCache.SmoothCacheCalibrate", {"alpha": 0.15}, "SmoothCache")):
        offset = len(server.log())
        status, body = _post(server, node, {"model": ["1", 0], "filename_prefix": "onestep", **extra}, steps=1)
        assert status == 200, body
        message = _execution_error(_finish(server, body))
        assert f"{what} calibration needs at least 2 sampling steps, this run has 1" in message, message
        assert "skipped" not in server.log()[offset:]  # no run summary: the sampler never called the model
        assert (set(folder.iterdir()) if folder.is_dir() else set()) == before

    # the calibration folder is a file: found when the node runs, not after the run has sampled
    moved = folder.with_name("magcache.moved")
    if folder.is_dir():
        folder.rename(moved)
    try:
        folder.write_text("in the way", encoding="utf-8")
        offset = len(server.log())
        status, body = _post(server, "DitCache.MagCacheCalibrate", {"model": ["1", 0], "filename_prefix": "f"})
        assert status == 200, body
        message = _execution_error(_finish(server, body))
        assert f"the calibration folder {folder} is a file, not a folder" in message, message
        assert "skipped" not in server.log()[offset:]
    finally:
        folder.unlink(missing_ok=True)
        if moved.is_dir():
            moved.rename(folder)
    _still_runs(server)


# ------------------------------------------------------------------------------------------------ D4, D5
@pytest.mark.parametrize("node,name,value", [
    ("DitCache.ApplyFirstBlockCache", "threshold", 2.0),
    (MAG, "max_skip_steps", 0),
    ("DitCache.ApplyFirstBlockCache", "warmup_steps", 10 ** 30),
    ("DitCache.PABConfig", "spatial_skip", 101),
    ("DitCache.ApplyFasterCache", "attention_weight", 3.0),
    ("DitCache.SmoothCacheCalibrate", "alpha", math.nan),  # D5: it used to save a file that failed later
])
def test_out_of_range_numbers_are_rejected_at_prompt(server: Server, node, name, value):
    """HTTP 400 naming the input: ComfyUI's own min/max check for an input the node's validate_inputs does not
    name (integers), the node's check for the ones it names (floats: range, finiteness)."""
    status, body = _post(server, node, {**_defaults(server.get(f"/object_info/{node}")[node]), name: value})
    assert status == 400, body
    errors = body["node_errors"]["2"]["errors"]
    assert any(e["details"] == name and "than" in e["message"] for e in errors) or \
        any(d.split(" - ", 1)[1].startswith(f"{name} must be") for d in _errors(body)), errors


def test_nan_and_infinity_in_every_float_input_are_rejected_at_prompt(server: Server):
    checked = 0
    for node, info in _nodes(server).items():
        base = _defaults(info)
        for name, spec in info["input"]["required"].items():
            if spec[0] != "FLOAT":
                continue
            for value in (math.nan, math.inf, -math.inf):
                status, body = _post(server, node, {**base, name: value})
                assert status == 400, (node, name, value, body)
                assert any(f"{name} must be a finite number, got {value}" in d for d in _errors(body)), body
                checked += 1
    assert checked >= 3 * 30


def test_linked_values_are_checked_before_sampling(server: Server):
    """A value from another node is not known at /prompt: the node rejects it when it runs, before sampling."""
    inputs = {**_defaults(server.get("/object_info/DitCache.ApplyFirstBlockCache")["DitCache.ApplyFirstBlockCache"]),
              "threshold": ["5", 0]}
    offset = len(server.log())
    status, body = _post(server, "DitCache.ApplyFirstBlockCache", inputs,
                         extra={"5": {"class_type": "PrimitiveFloat", "inputs": {"value": math.nan}}})
    assert status == 200, body
    message = _execution_error(_finish(server, body))
    assert message.startswith("Apply FirstBlockCache: threshold must be a finite number, got nan"), message
    assert "skipped" not in server.log()[offset:]
    status, body = _post(server, "DitCache.MagCacheCalibrate", {"model": ["1", 0], "filename_prefix": ["5", 0]},
                         extra={"5": {"class_type": "PrimitiveString", "inputs": {"value": SURROGATE * 50}}})
    assert status == 200, body
    message = _execution_error(_finish(server, body))
    assert f"filename_prefix is {len(SURROGATE) * 50} characters long, at most 100" in message, message
    _still_runs(server)


# ------------------------------------------------------------------------------------------------ D7
def test_wrong_types_are_named_in_plain_words(server: Server):
    base = _defaults(server.get(f"/object_info/{MAG}")[MAG])
    status, body = _post(server, MAG, {**base, "calibration": 123})
    assert status == 400
    (message,) = {d.split(" - ", 1)[1] for d in _errors(body)}
    assert message.startswith("calibration must be one of the listed choices") and \
        message.endswith("got the number 123"), message

    # null passes /prompt (ComfyUI cannot tell it from a linked input there): the node names it when it runs
    status, body = _post(server, MAG, {**base, "calibration": None})
    assert status == 200, body
    message = _execution_error(_finish(server, body))
    assert message.startswith("Apply MagCache: calibration must be one of the listed choices") and \
        message.endswith("got nothing (null)"), message

    status, body = _post(server, MAG, {**base, "start_percent": "abc"})
    assert status == 400
    text = json.dumps(body)
    assert "start_percent must be a number, got the text 'abc'" in text and "not supported between" not in text

    # a window error: the same one sentence in every error ComfyUI makes of it (0.3.75 repeats a failed
    # validate_inputs once per input it names; see nodes/base.py)
    status, body = _post(server, MAG, {**base, "start_percent": 0.9, "end_percent": 0.1})
    assert status == 400
    details = _errors(body)
    assert details and {d.split(" - ", 1)[1] for d in details} == {
        "start_percent (0.9) must be smaller than end_percent (0.1)"}, details
    _still_runs(server)

