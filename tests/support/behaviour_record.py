"""A recorded run of every method on the tiny Flux and Wan through ``comfy.sample``: final latents and every
per-call decision. Taken once before the structure change (``python tests/support/behaviour_record.py``
writes ``tests/data/behaviour_baseline.*``); ``tests/comfy/test_behaviour_unchanged.py`` re-runs it and requires
bit-identical latents and identical decisions.

Nodes are reached by their ComfyUI node id and called with keyword inputs (the schema's names), so the record
does not depend on where a node class lives.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parents[1] / "data"
BASELINE_JSON = DATA / "behaviour_baseline.json"
BASELINE_LATENTS = DATA / "behaviour_baseline.safetensors"
FAMILIES = ("flux", "wan21")
STEPS = 12
CFG = 2.0  # cond and uncond streams, batched by ComfyUI: exercises the per-stream bookkeeping and uncond reuse

_WINDOW = {"start_percent": 0.0, "end_percent": 1.0, "max_consecutive_skips": -1, "warmup_steps": 0}
_PAB = {"spatial_skip": 2, "temporal_skip": 0, "cross_skip": 3,
        **{f"{k}_start_percent": 0.1 for k in ("spatial", "temporal", "cross")},
        **{f"{k}_end_percent": 0.9 for k in ("spatial", "temporal", "cross")}}
_FASTER = {"spatial_skip": 2, "temporal_skip": 0, "attention_weight": 0.5, "uncond_skip": 3,
           "alpha_low": 1.1, "alpha_high": 1.1, "attention_start_percent": 0.1, "attention_end_percent": 1.0,
           "uncond_start_percent": 0.2, "uncond_end_percent": 1.0, "low_freq_start_percent": 0.099,
           "low_freq_end_percent": 0.901, "high_freq_start_percent": 0.699, "high_freq_end_percent": 1.0}

# (case name, node id, inputs); "<calibration:X>" is replaced by the file X Calibrate saved for the model
CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fbc", "DitCache.ApplyFirstBlockCache", {"threshold": 0.2, **_WINDOW}),
    ("fbc_gated", "DitCache.ApplyFirstBlockCache",
     {"threshold": 0.3, "start_percent": 0.1, "end_percent": 0.9, "max_consecutive_skips": 2, "warmup_steps": 2}),
    ("teacache", "DitCache.ApplyTeaCache",
     {"rel_l1_threshold": 0.4, "coefficients": "auto", "start_percent": 0.0, "end_percent": 1.0,
      "max_consecutive_skips": -1}),
    ("dbcache", "DitCache.ApplyDBCache",
     {"Fn": 1, "Bn": 0, "threshold": 0.25, "warmup_steps": 2, "max_cached_steps": -1,
      "max_consecutive_cached_steps": -1, "taylorseer_order": 0, "start_percent": 0.0, "end_percent": 1.0}),
    ("dbcache_taylor", "DitCache.ApplyDBCache",
     {"Fn": 1, "Bn": 1, "threshold": 0.25, "warmup_steps": 2, "max_cached_steps": 5,
      "max_consecutive_cached_steps": 2, "taylorseer_order": 1, "start_percent": 0.0, "end_percent": 1.0}),
    ("taylorseer", "DitCache.ApplyTaylorSeer",
     {"cache_interval": 3, "warmup_steps": 2, "final_full_steps": 1, "max_order": 1, "predict": "block outputs",
      "factor_dtype": "bfloat16"}),
    ("taylorseer_components", "DitCache.ApplyTaylorSeer",
     {"cache_interval": 3, "warmup_steps": 2, "final_full_steps": 1, "max_order": 2, "predict": "attention+MLP outputs",
      "factor_dtype": "float32"}),
    ("adaptive", "DitCache.ApplyAdaptiveCache", {"threshold": 0.4, **_WINDOW, "start_percent": 0.15}),
    ("pab", "DitCache.PABConfig", _PAB),
    ("fastercache", "DitCache.ApplyFasterCache", _FASTER),
    ("magcache", "DitCache.ApplyMagCache",
     {"calibration": "<calibration:MagCache>", "threshold": 0.1, "max_skip_steps": 2, "retention_ratio": 0.2,
      "start_percent": 0.0, "end_percent": 1.0, "interpolation": "schedule"}),
    ("smoothcache", "DitCache.ApplySmoothCache", {"calibration": "<calibration:SmoothCache>", "alpha": 0.5}),
)
CALIBRATE = {"MagCache": ("DitCache.MagCacheCalibrate", "MagCacheCalibrate"),
             "SmoothCache": ("DitCache.SmoothCacheCalibrate", "SmoothCacheCalibrate")}


def node_classes(pack: Any) -> dict[str, Any]:
    return {cls.define_schema().node_id: cls for cls in pack.nodes.NODES}


def _decisions(run: dict[str, Any]) -> list[list[Any]]:
    """Per-call decisions of a run: (stream, call index, skipped, reason, metric rounded to 1e-9)."""
    return [[r["stream"], r["call_index"], r["skipped"], r["reason"],
             None if r["metric"] is None else round(float(r["metric"]), 9)] for r in run["records"]]


def record(pack: Any, folder: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run every case on every family; calibrations go to ``folder``. Returns (decisions, latents)."""
    import folder_paths
    import tiny_models
    from sampling import ksample

    store = pack.nodes.calibration_store
    store.register()
    paths = folder_paths.folder_names_and_paths[store.FOLDER][0]
    paths.insert(0, folder)
    nodes = node_classes(pack)
    run_log = pack.hosts.comfy.run_log
    decisions: dict[str, Any] = {}
    latents: dict[str, torch.Tensor] = {}
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for family in FAMILIES:
            tiny = tiny_models.build(family)
            calibrations: dict[str, str] = {}
            for method, (node_id, name) in CALIBRATE.items():
                run_log.clear()
                ksample(nodes[node_id].execute(tiny.patcher, f"baseline-{family}").result[0], tiny, steps=STEPS,
                        cfg=CFG)
                run = [r for r in run_log.recent() if r.get("method") == name and "calibration" in r][-1]
                calibrations[method] = run["calibration"]["file"]
            latents[f"{family}/uncached"] = ksample(tiny.patcher, tiny, steps=STEPS, cfg=CFG)
            for case, node_id, inputs in CASES:
                inputs = {k: (calibrations[v[13:-1]] if isinstance(v, str) and v.startswith("<calibration:") else v)
                          for k, v in inputs.items()}
                run_log.clear()
                out = ksample(nodes[node_id].execute(tiny.patcher, **inputs).result[0], tiny, steps=STEPS, cfg=CFG)
                runs = run_log.recent()
                if len(runs) != 1:
                    raise RuntimeError(f"{family}/{case}: {len(runs)} runs recorded, expected 1")
                latents[f"{family}/{case}"] = out
                decisions[f"{family}/{case}"] = {"decisions": _decisions(runs[0]), "reuse": runs[0]["reuse"],
                                                 "reuse_by_kind": runs[0]["reuse_by_kind"]}
    finally:
        torch.set_num_threads(n_threads)
        paths.remove(folder)
    return decisions, latents


def main() -> None:
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import comfy_env

    comfy_env.setup_comfy()
    pack = comfy_env.load_pack()
    with tempfile.TemporaryDirectory(prefix="dit-cache-baseline-") as folder:
        decisions, latents = record(pack, folder)
    DATA.mkdir(exist_ok=True)
    BASELINE_JSON.write_text(json.dumps(decisions, indent=0, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in latents.items()}, str(BASELINE_LATENTS))
    print(f"recorded {len(decisions)} cached runs and {len(latents)} latents into {DATA}")


if __name__ == "__main__":
    main()
