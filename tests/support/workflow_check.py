"""Check a UI-format workflow against a server's ``/object_info``: node types, links and every widget value.

What the ComfyUI front end would do on Load: each node's ``widgets_values`` are assigned, in order, to the
node's widget inputs as ``/object_info`` lists them (required, then optional; an INT input with
``control_after_generate`` takes one extra value, the "control after generate" mode). A value of the wrong
kind, out of range or not among a combo's options would load as garbage or be refused at queue time.
Model-file combos of loader nodes (``*_name``: their options are the files a user has; the test server has
none) are only checked to name a model file. A muted node (mode 2) is not queued until the user unmutes it,
so its combo values need only be strings (e.g. a calibration file the workflow's first run creates); everything
else is checked as for any node.
"""
from __future__ import annotations

from typing import Any

from workflow_convert import MUTED, REPLACED, VIRTUAL

WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODEL_FILE_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".sft")


def missing_types(workflow: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Node types of the workflow the server does not know (front-end-only nodes excepted)."""
    return sorted({n["type"] for n in workflow["nodes"]
                   if n["type"] not in VIRTUAL and n["type"] not in object_info})


def _spec(info: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    order = [*info["input_order"].get("required", []), *info["input_order"].get("optional", [])]
    spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    return order, spec


def _check_value(where: str, value: Any, entry: list, node_type: str, muted: bool = False) -> list[str]:
    kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        if muted:
            return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
        options = kind if isinstance(kind, list) else opts.get("options", [])
        if node_type in REPLACED and where.rstrip("0123456789").endswith("_name"):
            # a loader's model file list (unet_name, clip_name1, vae_name, ...): the files of the test server
            ok = value in options or (isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES))
            return [] if ok else [f"{where}: {value!r} is no model file name"]
        return [] if value in options else [f"{where}: {value!r} not among {options}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    if kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"{where}: {value!r} is not an integer"]
    if kind == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return [f"{where}: {value!r} is not a number"]
    lo, hi = opts.get("min"), opts.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return [f"{where}: {value!r} outside [{lo}, {hi}]"]
    return []


def problems(workflow: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Everything in ``workflow`` that does not fit ``object_info`` (empty: loads and queues as saved)."""
    out: list[str] = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for lid, src, src_slot, dst, dst_slot, ltype in workflow["links"]:
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            out.append(f"link {lid}: node {src if s is None else dst} missing")
            continue
        if lid not in (s["outputs"][src_slot].get("links") or []) or d["inputs"][dst_slot].get("link") != lid:
            out.append(f"link {lid}: not recorded on both ends")
        for node, slot, side in ((s, src_slot, "output"), (d, dst_slot, "input")):
            info = object_info.get(node["type"])
            if info is None:
                continue
            if side == "output":
                want = info["output"][slot] if slot < len(info["output"]) else None
            else:
                name = node["inputs"][slot]["name"]
                entry = _spec(info)[1].get(name)
                want = None if entry is None else entry[0]
            if want != ltype:
                out.append(f"link {lid}: {node['type']} {side} {slot} is {want!r}, the link carries {ltype!r}")
    for n in workflow["nodes"]:
        info = object_info.get(n["type"])
        if info is None:
            continue
        order, spec = _spec(info)
        linked = {i["name"] for i in n.get("inputs") or [] if i.get("link") is not None}
        for i in n.get("inputs") or []:
            if i["name"] not in spec:
                out.append(f"node {n['id']} ({n['type']}): no input named {i['name']!r}")
        values = list(n.get("widgets_values") or [])
        expected = 0
        for name in order:
            entry = spec[name]
            if name in linked or not (isinstance(entry[0], list) or entry[0] in WIDGET_KINDS):
                continue
            where = f"node {n['id']} ({n['type']}).{name}"
            if not values:
                out.append(f"{where}: no widget value")
                break
            out += _check_value(where, values.pop(0), entry, n["type"], muted=n.get("mode", 0) == MUTED)
            expected += 1
            opts = entry[1] if len(entry) > 1 else {}
            if entry[0] == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                control = values.pop(0) if values else None
                if control not in CONTROL_VALUES:
                    out.append(f"{where}: control-after-generate value {control!r} not in {CONTROL_VALUES}")
        if values:
            out.append(f"node {n['id']} ({n['type']}): {len(values)} widget values more than its {expected} "
                       f"widget inputs: {values}")
        for name in info["input_order"].get("required", []):
            if spec[name][0] not in WIDGET_KINDS and not isinstance(spec[name][0], list) and name not in linked:
                out.append(f"node {n['id']} ({n['type']}): required input {name!r} is not connected")
    return out
