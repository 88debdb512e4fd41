"""The shared node base (nodes/base.py, nodes/calibrate.py) and the calibration store's per-format lists, without
sampling: what every node gets from the base (validation ComfyUI can still check, the off switch, the label and
graph id it attaches with) and that the store lists a format it has never heard of by name."""
from __future__ import annotations

import inspect
import logging
import re
from types import SimpleNamespace

import pytest
import torch
from comfy_api.internal import first_real_override
from comfy_api.latest import io

from dit_cache import nodes
from dit_cache.cache_core import calibration_files
from dit_cache.cache_core.methods import magcache_calibration as cal_io
from dit_cache.cache_core.text import shown
from dit_cache.nodes import base, calibrate, calibration_store
from dit_cache.nodes.fastercache_node import ApplyFasterCache
from dit_cache.nodes.fbc_node import ApplyFirstBlockCache
from dit_cache.nodes.magcache_nodes import ApplyMagCache, MagCacheCalibrate
from dit_cache.nodes.pab_node import PABConfigNode
from dit_cache.nodes.smoothcache_nodes import SmoothCacheCalibrate

NODES = {cls.define_schema().node_id: cls for cls in nodes.NODES}


def _defaults(cls) -> dict:
    return {i.id: i.default for i in cls.define_schema().inputs if i.id != "model"}


CHECKED = (io.Float.Input, io.Combo.Input, io.String.Input)  # what ComfyUI 0.3.75 does not check fully itself


def test_every_node_uses_the_base_and_validates_exactly_its_float_combo_and_text_inputs():
    for node_id, cls in NODES.items():
        assert issubclass(cls, base.CacheNode), node_id
        validate = first_real_override(cls, "validate_inputs")
        assert validate is not None, node_id
        spec = inspect.getfullargspec(validate)
        # with **kwargs ComfyUI skips its own min/max/choice checks for every input of the node
        assert spec.varkw is None and spec.varargs is None, node_id
        # a named input loses ComfyUI's min/max check (the node's check_inputs does it); a float not named would
        # pass NaN, a combo not named any value at all (0.3.75 does not compare V3 combos with their options)
        want = {i.id for i in cls.define_schema().inputs if isinstance(i, CHECKED)}
        assert set(spec.args) - {"cls"} == want, node_id
        assert validate(**{k: None for k in want}) is True, node_id  # linked inputs: checked when the node runs


@pytest.mark.parametrize("value,words", [
    (float("nan"), "threshold must be a finite number, got nan"),
    (float("inf"), "threshold must be a finite number, got inf"),
    (2.0, "threshold must be between 0 and 1, got 2.0"),
    (-0.5, "threshold must be between 0 and 1, got -0.5"),
    ("abc", "threshold must be a number, got the text 'abc'"),
    (True, "threshold must be a number, got true"),
])
def test_float_inputs_are_checked_by_name_with_plain_words(value, words):
    assert ApplyFirstBlockCache.validate_inputs(threshold=value, start_percent=0.0, end_percent=1.0) == words
    if "between" in words:
        return  # a linked value outside the widget's range is the config's to check (as ComfyUI does not)
    # a linked value (not known at /prompt): the node rejects it when it runs, before it looks at the model
    with pytest.raises(ValueError, match=re.escape(f"Apply FirstBlockCache: {words}")):
        ApplyFirstBlockCache.execute(object(), **{**_defaults(ApplyFirstBlockCache), "threshold": value})


def test_choice_and_text_inputs_are_checked_with_escaped_values():
    ok = {"calibration": "preset: flux_dev", "threshold": 0.1, "retention_ratio": 0.2, "start_percent": 0.0,
          "end_percent": 1.0, "interpolation": "schedule"}
    assert ApplyMagCache.validate_inputs(**ok) is True
    same = "calibration {} is not one of the listed choices"
    for bad in ("x\udcff.safetensors", "preset: ../../etc/x", "/etc/passwd", "a" * 5000, "\x1b[2J\n"):
        msg = ApplyMagCache.validate_inputs(**{**ok, "calibration": bad})
        assert msg.startswith(same.format(shown(bad))), msg
        msg.encode("ascii")  # escaped: nothing the console could choke on
        assert len(msg) < 1000
    assert ApplyMagCache.validate_inputs(**{**ok, "calibration": 123}).startswith(
        "calibration must be one of the listed choices")
    assert ApplyMagCache.validate_inputs(**{**ok, "calibration": 123}).endswith("got the number 123")
    assert ApplyMagCache.validate_inputs(**{**ok, "interpolation": "cubic"}) == \
        "interpolation 'cubic' is not one of the listed choices (schedule, nearest)"
    with pytest.raises(ValueError, match=re.escape("calibration must be one of the listed choices")) as err:
        ApplyMagCache.execute(object(), **{**ok, "calibration": None, "max_skip_steps": 3})
    assert str(err.value).endswith("got nothing (null)")
    assert MagCacheCalibrate.validate_inputs(filename_prefix="x" * base.MAX_TEXT) is True
    assert MagCacheCalibrate.validate_inputs(filename_prefix="x" * 300) == \
        f"filename_prefix is 300 characters long, at most {base.MAX_TEXT}"
    assert SmoothCacheCalibrate.validate_inputs(filename_prefix="p", alpha=float("nan")) == \
        "alpha must be a finite number, got nan"


def test_window_errors_are_one_message_and_linked_inputs_pass():
    msg = ApplyFirstBlockCache.validate_inputs(start_percent=0.9, end_percent=0.1)
    assert msg == "start_percent (0.9) must be smaller than end_percent (0.1)"
    assert ApplyFirstBlockCache.validate_inputs(start_percent=None, end_percent=0.1) is True  # a linked input
    windows = {f"{k}_{e}_percent": v for k in ("spatial", "temporal", "cross")
               for e, v in (("start", 0.2), ("end", 0.9))}
    assert PABConfigNode.validate_inputs(**windows) is True
    msg = PABConfigNode.validate_inputs(**{**windows, "spatial_start_percent": 0.95, "cross_end_percent": 0.1})
    assert msg.count("must be smaller") == 2
    assert "spatial_start_percent (0.95)" in msg and "cross_end_percent (0.1)" in msg
    faster = {k: v for k, v in _defaults(ApplyFasterCache).items() if k.endswith("_percent")}
    assert ApplyFasterCache.validate_inputs(**faster) is True
    assert "uncond_start_percent (1.0)" in ApplyFasterCache.validate_inputs(**{**faster, "uncond_start_percent": 1.0})


OFF = {  # node id -> (inputs that switch it off, the reason logged)
    "DitCache.ApplyFirstBlockCache": ({"threshold": 0.0}, "threshold 0, cache disabled"),
    "DitCache.ApplyAdaptiveCache": ({"threshold": 0.0}, "threshold 0, cache disabled"),
    "DitCache.ApplyDBCache": ({"threshold": 0.0}, "threshold 0, cache disabled"),
    "DitCache.ApplyMagCache": ({"threshold": 0.0}, "threshold 0, cache disabled"),
    "DitCache.ApplyTeaCache": ({"rel_l1_threshold": 0.0}, "rel_l1_threshold 0, cache disabled"),
    "DitCache.ApplySmoothCache": ({"alpha": 0.0}, "alpha 0, cache disabled"),
    "DitCache.ApplyTaylorSeer": ({"cache_interval": 1}, "cache_interval 1 computes every step, cache disabled"),
    "DitCache.PABConfig": ({"spatial_skip": 0, "cross_skip": 1}, "no attention kind has N >= 2, PAB disabled"),
    "DitCache.ApplyFasterCache": ({"spatial_skip": 0, "uncond_skip": 1}, "every N is below 2, FasterCache disabled"),
}


@pytest.mark.parametrize("node_id", sorted(OFF))
def test_off_inputs_return_the_model_untouched_with_one_log_line(node_id, caplog):
    cls = NODES[node_id]
    inputs, reason = OFF[node_id]
    model = object()  # never looked at
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out = cls.execute(model, **{**_defaults(cls), **inputs})
    assert out.result[0] is model
    label = cls.define_schema().display_name
    assert [r.getMessage() for r in caplog.records if r.name == "dit_cache"] == [
        f"[dit-cache] {label}: {reason} (model unchanged)"]


def test_attach_uses_the_display_name_the_graph_id_and_the_registry_policy(monkeypatch):
    from dit_cache.cache_core.methods.fbc import FirstBlockCachePolicy

    calls = []
    monkeypatch.setattr(base, "apply_cache", lambda model, policy, label, node_id, settings: calls.append(
        (model, policy, label, node_id)) or settings == {} and "patched")  # no calibration to show
    inputs = {**_defaults(ApplyFirstBlockCache), "threshold": 0.2}
    clone = ApplyFirstBlockCache.PREPARE_CLASS_CLONE({io.Hidden.unique_id: 7})  # what ComfyUI runs
    assert clone.execute("model", **inputs).result[0] == "patched"
    assert ApplyFirstBlockCache.execute("model", **inputs).result[0] == "patched"  # direct call: no graph id
    (m1, p1, l1, id1), (_, _, l2, id2) = calls
    assert m1 == "model" and isinstance(p1, FirstBlockCachePolicy) and p1.config.threshold == 0.2
    assert (l1, id1, l2, id2) == ("Apply FirstBlockCache", "7", "Apply FirstBlockCache", None)


@pytest.mark.parametrize("cls", [MagCacheCalibrate, SmoothCacheCalibrate])
def test_calibrate_on_an_unsupported_model_warns_and_returns_it(cls, caplog):
    model = SimpleNamespace(get_model_object=lambda name: torch.nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out = cls.execute(model, **_defaults(cls))
    assert out.result[0] is model
    label = cls.define_schema().display_name
    assert f"[dit-cache] {label}: Linear is not a supported DiT model; nothing to calibrate" in caplog.text


def test_sampler_settings_read_from_the_sampler_fed_by_the_node():
    prompt = {"3": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "sampler_name": "euler",
                                                         "scheduler": "simple"}},
              "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "sampler_name": "heun"}}}
    assert calibrate.sampler_settings(prompt, "5") == ("euler", "simple")
    assert calibrate.sampler_settings(prompt, "9") == ("unknown", "unknown")
    assert calibrate.sampler_settings(None, "5") == ("unknown", "unknown")


def test_store_lists_and_loads_a_format_through_the_format_map(store, monkeypatch):
    """A third calibrated method: its format registered, nothing added to the store."""
    from safetensors.torch import save_file

    fmt = "dit-cache.test-third.v1"
    monkeypatch.setitem(calibration_files._LOADERS, fmt, lambda path: SimpleNamespace(path=path, name=""))
    save_file({"x": torch.zeros(1)}, str(store / "third.safetensors"), metadata={"format": fmt})
    save_file({"x": torch.zeros(1)}, str(store / "mag.safetensors"), metadata={"format": cal_io.FORMAT})
    (store / "broken.safetensors").write_bytes(b"not a safetensors file")
    listed = calibration_store.choices(fmt)
    # its own files and the files no format claims (picking one gives an error naming it); not MagCache's
    assert "third.safetensors" in listed and "broken.safetensors" in listed and "mag.safetensors" not in listed
    assert "third.safetensors" not in calibration_store.choices(cal_io.FORMAT)
    cal = calibration_store.load("third.safetensors", fmt, "Third")
    assert cal.name == "third.safetensors" and str(cal.path).endswith("third.safetensors")
    # a name not listed, a path to a file that exists, a path out of the folder: the same words, nothing opened
    same = "Third calibration {} is not one of the listed calibrations"
    for choice in ("gone.safetensors", str(store / "third.safetensors"), "../" + store.name + "/third.safetensors",
                   123, None):
        with pytest.raises(ValueError) as err:
            calibration_store.load(choice, fmt, "Third")
        assert str(err.value) == same.format(shown(choice)), choice
