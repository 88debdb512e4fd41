"""The pack's node names, categories and input labels as a real server's ``/object_info`` gives them to the page
(issue 20 item 7; nodes/naming.py).

Three names were promised to users and stay exactly as they are; every other apply node is "Apply <Method>" and
every calibrate node "<Method> Calibrate", the method written as one word. Node ids never change (saved
workflows). No node but the start-here node sits in the flat "dit-cache" category.
"""
from __future__ import annotations

import re

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"

pytestmark = pytest.mark.server

FIXED = {"DitCache.ApplyFirstBlockCache": "Apply FirstBlockCache", "DitCache.MagCacheCalibrate": "MagCache Calibrate",
         "DitCache.PABConfig": "PAB Config"}
RENAMED = {"DitCache.ApplyAdaptiveCache": "Apply AdaptiveCache", "DitCache.ApplyPromptCache": "Apply PromptCache",
           "DitCache.ApplyStepSchedule": "Apply StepSchedule", "DitCache.StepScheduleCalibrate": "StepSchedule Calibrate",
           "DitCache.SmoothCacheCalibrate": "SmoothCache Calibrate", "DitCache.ApplyTeaCache": "Apply TeaCache"}
# the tuning nodes of issue 16 (their own names, allowed here): the start-here node is the one in the root category
START_HERE = {"DitCache.ApplyAuto": "Cache (DiT, start here)"}
OTHER_ALLOWED = {"DitCache.Tune": "DiT Cache Tune"}
METHOD = r"[A-Z][A-Za-z]*[a-z][A-Za-z]*"  # one word: FirstBlockCache, DBCache, TaylorSeer
PATTERN = re.compile(rf"^(Apply {METHOD}|{METHOD} Calibrate)$")
GROUPS = {"dit-cache/step skipping", "dit-cache/block caching", "dit-cache/attention", "dit-cache/across prompts",
          "dit-cache/calibrate"}


def _pack_nodes(server: Server) -> dict[str, dict]:
    nodes = {k: v for k, v in server.get("/object_info").items() if k.startswith("DitCache.")}
    assert len(nodes) >= 17, sorted(nodes)
    return nodes


def test_names_follow_one_pattern_and_the_promised_ones_are_unchanged(server: Server):
    nodes = _pack_nodes(server)
    for node_id, name in {**FIXED, **RENAMED}.items():
        assert nodes[node_id]["display_name"] == name, node_id
    for node_id, spec in nodes.items():
        name = spec["display_name"]
        if node_id in FIXED or node_id in START_HERE or node_id in OTHER_ALLOWED:
            assert name == {**FIXED, **START_HERE, **OTHER_ALLOWED}[node_id], node_id
            continue
        assert PATTERN.match(name), f"{node_id}: {name!r} is neither 'Apply <Method>' nor '<Method> Calibrate'"
        word = name.removeprefix("Apply ").removesuffix(" Calibrate")
        # the node id names the same method (ids never change: DitCache.Apply<Method> / DitCache.<Method>Calibrate)
        assert word.lower() in node_id.lower(), (node_id, name)
    names = [spec["display_name"] for spec in nodes.values()]
    assert len(names) == len(set(names)), names


def test_categories_group_the_nodes(server: Server):
    nodes = _pack_nodes(server)
    for node_id, spec in nodes.items():
        category = spec["category"]
        if node_id in START_HERE:
            assert category == "dit-cache", node_id
        elif node_id in OTHER_ALLOWED:
            assert category.startswith("dit-cache"), node_id
        else:
            assert category in GROUPS, f"{node_id} in {category!r}: every node sits in a subcategory"
        if spec["display_name"].endswith(" Calibrate"):
            assert category == "dit-cache/calibrate", node_id
    assert nodes["DitCache.ApplyFirstBlockCache"]["category"] == "dit-cache/step skipping"
    assert nodes["DitCache.PABConfig"]["category"] == "dit-cache/attention"
    assert nodes["DitCache.ApplyDBCache"]["category"] == "dit-cache/block caching"
    used = {spec["category"] for k, spec in nodes.items() if k not in START_HERE and k not in OTHER_ALLOWED}
    assert used == GROUPS, used  # no empty group, no stray one


def test_dbcache_block_inputs_are_labelled(server: Server):
    required = _pack_nodes(server)["DitCache.ApplyDBCache"]["input"]["required"]
    assert required["Fn"][1]["display_name"] == "front blocks (Fn)"  # the input ids (saved workflows) stay Fn / Bn
    assert required["Bn"][1]["display_name"] == "back blocks (Bn)"


def test_advanced_inputs_leave_the_main_knob_on_the_face(server: Server):
    """The frontend hides an input whose spec says ``advanced`` until "Show Advanced"; each apply node keeps its
    main knob visible and hides the shared window, skip-limit and warm-up inputs."""
    nodes = _pack_nodes(server)

    def advanced(node_id: str) -> set[str]:
        required = nodes[node_id]["input"]["required"]
        return {name for name, spec in required.items() if len(spec) > 1 and spec[1].get("advanced") is True}

    face = {"DitCache.ApplyFirstBlockCache": {"threshold"}, "DitCache.ApplyTeaCache": {"rel_l1_threshold", "coefficients"},
            "DitCache.ApplyMagCache": {"calibration", "threshold", "max_skip_steps"},
            "DitCache.ApplyDBCache": {"Fn", "Bn", "threshold", "taylorseer_order"},
            "DitCache.ApplyTaylorSeer": {"cache_interval", "max_order"},
            "DitCache.ApplyStepSchedule": {"calibration", "computed_steps", "max_error", "on_skipped"}}
    for node_id, knobs in face.items():
        hidden = advanced(node_id)
        assert not knobs & hidden, (node_id, knobs & hidden)
        required = nodes[node_id]["input"]["required"]
        for name in ("start_percent", "end_percent", "max_consecutive_skips", "warmup_steps"):
            if name in required:
                assert name in hidden, (node_id, name)
        assert len(required) - len(hidden) <= 5, (node_id, sorted(set(required) - hidden))
    assert {"alpha_low", "alpha_high", "attention_weight"} <= advanced("DitCache.ApplyFasterCache")
    for node_id in nodes:  # calibrate nodes: nothing hidden (a prefix and at most one knob)
        if node_id.endswith("Calibrate"):
            assert not advanced(node_id), node_id
