"""Prompts the server tests queue on the tiny model loader (node "DitCacheTest.TinyModelLoader",
support/test_nodes) and what they read back from the server's log.

- ``NODES``, ``_prompt``, ``_summary``: the step-level method nodes (DBCache, TaylorSeer, Adaptive Cache) on the tiny
  Flux (tests/server/test_step_methods_server.py, test_dbcache_server.py).
- ``_graph``, ``_run``: a calibrate or apply node between the loader and a KSampler on the tiny Wan, queued and
  waited for (tests/server/test_magcache_server.py, test_smoothcache_server.py).
"""
from __future__ import annotations

import re
import time
import uuid

from comfy_server import Server

LOADER = "DitCacheTest.TinyModelLoader"
NODES = {  # node id: (method name in the run summary, inputs of an aggressive setting on the tiny Flux)
    "DitCache.ApplyDBCache": ("DBCache", {
        "Fn": 1, "Bn": 1, "threshold": 0.3, "warmup_steps": 2, "max_cached_steps": -1,
        "max_consecutive_cached_steps": -1, "taylorseer_order": 1, "start_percent": 0.0, "end_percent": 1.0,
        "calibrator": "taylor"}),
    "DitCache.ApplyTaylorSeer": ("TaylorSeer", {
        "cache_interval": 3, "warmup_steps": 2, "final_full_steps": 1, "max_order": 1, "predict": "block outputs",
        "factor_dtype": "bfloat16", "forecaster": "taylor", "check_blocks": 0, "check_threshold": 0.1,
        "uncond_interval": 0}),
    "DitCache.ApplyAdaptiveCache": ("AdaptiveCache", {
        "threshold": 0.4, "start_percent": 0.15, "end_percent": 1.0, "max_consecutive_skips": -1,
        "warmup_steps": 0}),
}


def _prompt(node: str, inputs: dict) -> dict:
    return {
        "1": {"class_type": LOADER, "inputs": {"family": "flux", "seed": 0, "batch_size": 1}},
        "2": {"class_type": node, "inputs": {"model": ["1", 0], **inputs}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 12, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/forecast"}},
    }


def _summary(server: Server, offset: int, method: str, timeout: float = 10.0) -> re.Match | None:
    pattern = re.compile(rf"\[dit-cache\] {method}: skipped (\d+)/(\d+) model calls")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(server.log()[offset:])
        if m:
            return m
        time.sleep(0.1)
    return None


def _graph(middle: dict, steps: int = 12) -> dict:
    return {
        "1": {"class_type": LOADER, "inputs": {"family": "wan21", "seed": 0, "batch_size": 1}},
        "2": middle,
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": steps, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/mag"}},
    }


def _run(server: Server, prompt: dict) -> tuple[dict, str]:
    offset = len(server.log())
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    return entry, server.log()[offset:]
