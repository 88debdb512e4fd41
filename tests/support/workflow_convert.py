"""Rewrite a UI-format workflow from ``workflows/`` so a test server can run it without model files.

The workflows are what ComfyUI's Load / drag-and-drop reads (``nodes``, ``links``, ``widgets_values``). Tests
cannot load real weights, so ``to_tiny`` replaces:
- the loaders, text encoders, guidance/conditioning helpers and empty-latent nodes by
  "DitCacheTest.TinyModelLoader" nodes (outputs MODEL, positive, negative, LATENT: a tiny random model of the
  same ComfyUI class with matching conditioning and latent, tests/support/test_nodes/dit_cache_test_loader):
  one per model loader of the workflow (weight seeds ``seed``, ``seed + 1``, ...: two different models for a
  Wan 2.2 high-noise + low-noise workflow); conditioning and latent come from the first;
- VAE decode + image saving by "SaveLatent" on the latent the decoder got.
Every other node (every dit-cache node above all) keeps its id, inputs, links, mode and ``widgets_values``
(a SaveLatent takes the mode of the decoder it replaces); the result is still UI format, so the page can load
it with ``app.loadGraphData``. ``to_api_prompt`` leaves muted nodes (mode 2) out, as the front end does.
"""
from __future__ import annotations

import copy
from typing import Any

LOADER = "DitCacheTest.TinyModelLoader"
# Nodes whose outputs the tiny loader stands in for (standard ComfyUI core nodes of text-to-image workflows).
REPLACED = frozenset({
    "UNETLoader", "CheckpointLoaderSimple", "DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader", "VAELoader",
    "CLIPTextEncode", "CLIPTextEncodeFlux", "FluxGuidance", "ConditioningZeroOut",
    "EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyQwenImageLayeredLatentImage",
    "EmptyLTXVLatentVideo",
})
# Frontend-only nodes: never sent to the server.
VIRTUAL = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
DECODERS = frozenset({"VAEDecode", "VAEDecodeTiled"})
IMAGE_SINKS = frozenset({"SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveWEBM", "CreateVideo", "SaveVideo"})
MUTED = 2  # LiteGraph mode "never": the front end does not queue the node
BYPASSED = 4
# loader output slot per input type; CONDITIONING goes to "negative" (2) when the input is named so
_SLOTS = {"MODEL": 0, "CONDITIONING": 1, "LATENT": 3}


def _find(nodes: list[dict], node_id: int) -> dict:
    for n in nodes:
        if n["id"] == node_id:
            return n
    raise KeyError(f"node {node_id} not in the workflow")


def to_tiny(workflow: dict[str, Any], family: str = "flux", seed: int = 0, batch_size: int = 1,
            filename_prefix: str = "latents/workflow") -> dict[str, Any]:
    """A copy of ``workflow`` (UI format) that samples a tiny ``family`` model and saves the latent."""
    wf = copy.deepcopy(workflow)
    nodes: list[dict] = wf["nodes"]
    links: list[list] = wf["links"]
    replaced = {n["id"] for n in nodes if n["type"] in REPLACED}
    decoders = {n["id"] for n in nodes if n["type"] in DECODERS}
    sinks = {n["id"] for n in nodes if n["type"] in IMAGE_SINKS}
    if not replaced:
        raise ValueError("the workflow has no loader/encoder/latent node to replace")
    dropped = replaced | decoders | sinks
    next_node = max(int(wf.get("last_node_id", 0)), *(n["id"] for n in nodes)) + 1
    next_link = max(int(wf.get("last_link_id", 0)), *(lk[0] for lk in links), 0) + 1

    # one tiny loader per model loader (in node id order), the first also for conditioning and latent
    model_loaders = sorted(n["id"] for n in nodes if n["id"] in replaced
                           and any(o["type"] == "MODEL" for o in n.get("outputs") or []))
    loaders: list[dict] = []
    x = min(n["pos"][0] for n in nodes if n["id"] in replaced)
    y = min(n["pos"][1] for n in nodes if n["id"] in replaced)
    for i in range(max(len(model_loaders), 1)):
        loaders.append({
            "id": next_node, "type": LOADER, "pos": [x, y + 180 * i], "size": [320, 150], "flags": {},
            "order": 0, "mode": 0, "inputs": [],
            "outputs": [{"name": name, "type": t, "links": []} for name, t in
                        (("MODEL", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("LATENT", "LATENT"))],
            "properties": {"Node name for S&R": LOADER},
            # family, seed, the frontend's "control after generate" widget of an input named seed, batch_size
            "widgets_values": [family, seed + i, "fixed", batch_size],
        })
        next_node += 1
    loader_of = {mid: loaders[i] for i, mid in enumerate(model_loaders)}
    new_links: list[list] = []
    savers: list[dict] = []
    for lk in links:
        lid, src, src_slot, dst, dst_slot, ltype = lk
        if dst in dropped:
            continue
        if src in replaced:
            target = _find(nodes, dst)
            slot = _SLOTS.get(ltype)
            if slot is None:
                raise ValueError(f"cannot feed {target['type']} input {dst_slot} ({ltype}) from the tiny loader")
            if ltype == "CONDITIONING" and target["inputs"][dst_slot]["name"] == "negative":
                slot = 2
            loader = loader_of.get(src, loaders[0]) if ltype == "MODEL" else loaders[0]
            new_links.append([lid, loader["id"], slot, dst, dst_slot, ltype])
            loader["outputs"][slot]["links"].append(lid)
        elif src in dropped:
            raise ValueError(f"node {dst} takes input from dropped node {src} ({ltype})")
        else:
            new_links.append(lk)
    # Each decoder's latent input goes to a SaveLatent instead.
    for dec in sorted(decoders):
        dnode = _find(nodes, dec)
        lat = next((lk for lk in links if lk[3] == dec and lk[5] == "LATENT"), None)
        if lat is None or lat[1] in dropped:
            continue
        lid = next_link
        next_link += 1
        saver = {
            "id": next_node, "type": "SaveLatent", "pos": list(dnode["pos"]), "size": [320, 60], "flags": {},
            "order": 0, "mode": dnode.get("mode", 0), "inputs": [{"name": "samples", "type": "LATENT", "link": lid}],
            "outputs": [],
            "properties": {"Node name for S&R": "SaveLatent"}, "widgets_values": [filename_prefix],
        }
        next_node += 1
        new_links.append([lid, lat[1], lat[2], saver["id"], 0, "LATENT"])
        src = _find(nodes, lat[1])
        src["outputs"][lat[2]]["links"] = [x for x in src["outputs"][lat[2]]["links"] or [] if x != lat[0]] + [lid]
        savers.append(saver)
    if not savers:
        raise ValueError("the workflow has no VAE decode of a sampled latent to save")

    kept_links = {lk[0] for lk in new_links}
    kept = []
    for n in nodes:
        if n["id"] in dropped:
            continue
        for out in n.get("outputs") or []:
            if out.get("links"):
                out["links"] = [x for x in out["links"] if x in kept_links]
        kept.append(n)
    wf["nodes"] = [*loaders, *kept, *savers]
    wf["links"] = new_links
    wf["last_node_id"] = next_node - 1
    wf["last_link_id"] = next_link - 1
    return wf


def to_api_prompt(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API-format prompt of a UI workflow of plain nodes (no subgraphs, no converted widgets), mapping
    ``widgets_values`` to the widget inputs in the order ``object_info`` lists them (seed inputs carry the
    frontend's extra "control after generate" value). Virtual nodes (Note) and muted nodes (mode 2) are left
    out, and so are inputs linked to a muted node (as the front end does)."""
    links = {lk[0]: lk for lk in workflow["links"]}
    modes = {n["id"]: n.get("mode", 0) for n in workflow["nodes"]}
    if BYPASSED in modes.values():
        raise ValueError("bypassed nodes (mode 4) are not supported")
    prompt: dict[str, Any] = {}
    for n in workflow["nodes"]:
        info = object_info.get(n["type"])
        if info is None or n.get("mode", 0) == MUTED:
            continue  # frontend-only node (Note, MarkdownNote, Reroute) or muted
        linked = {i["name"]: links[i["link"]] for i in n.get("inputs") or []
                  if i.get("link") is not None and modes.get(links[i["link"]][1], 0) != MUTED}
        values = list(n.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        order = [*info["input_order"].get("required", []), *info["input_order"].get("optional", [])]
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in order:
            if name in linked:
                lk = linked[name]
                inputs[name] = [str(lk[1]), lk[2]]
                continue
            kind = spec[name][0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                if not values:
                    break
                inputs[name] = values.pop(0)
                opts = spec[name][1] if len(spec[name]) > 1 else {}
                if kind == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    values.pop(0)
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt
