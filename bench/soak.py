"""Soak: N cached prompts through a real ComfyUI server; does the server's memory or history keep growing?

Starts ComfyUI (``main.py``, CPU) with this checkout's pack the way the server tests do
(``tests/support/comfy_server.py``: writable folders in a temporary directory), queues N prompts of the tiny
model loader -> a dit-cache node -> KSampler -> SaveLatent (each with another seed, so none is a cache hit and every
one samples), in batches, and reports before and after (the "before" point is after a warm-up prompt):

- the server process's resident memory (``VmRSS``; ``VmHWM``, its peak);
- ComfyUI's own prompt history (``GET /history``: entries and JSON bytes; ComfyUI keeps up to 10000);
- the pack's run log as the page gets it (``GET /dit-cache/runs?client_id=...``: runs and JSON bytes; bounded by
  ``run_log.MAX_RUNS`` and ``run_log.MAX_BYTES``).

    .venv/bin/python bench/soak.py                    # 300 prompts, Apply FirstBlockCache on the tiny Flux, 4 steps
    .venv/bin/python bench/soak.py --prompts 50 --node DitCache.ApplyMagCache
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

from comfy_server import PACK, Server, comfy_server  # noqa: E402
from server_prompts import LOADER  # noqa: E402

NODES = {  # node id -> its inputs (the model is linked to the loader)
    "DitCache.ApplyFirstBlockCache": {"threshold": 0.12, "start_percent": 0.0, "end_percent": 1.0,
                                      "max_consecutive_skips": -1, "warmup_steps": 0},
    "DitCache.ApplyMagCache": {"calibration": "preset: flux_dev", "threshold": 0.3, "max_skip_steps": 3,
                               "retention_ratio": 0.2, "start_percent": 0.0, "end_percent": 1.0,
                               "interpolation": "schedule"},
}


def prompt(node: str, seed: int, steps: int) -> dict:
    return {
        "1": {"class_type": LOADER, "inputs": {"family": "flux", "seed": 0, "batch_size": 1}},
        "2": {"class_type": node, "inputs": {"model": ["1", 0], **NODES[node]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/soak"}},
    }


def kib(path: str) -> dict[str, int]:
    """VmRSS / VmHWM of a process, KiB (Linux /proc)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def raw(server: Server, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=60) as r:
        return r.read()


def snapshot(server: Server, client: str) -> dict:
    mem = kib(f"/proc/{server.proc.pid}/status")
    history = raw(server, "/history")
    runs = raw(server, f"/dit-cache/runs?client_id={client}")
    return {"rss_mb": mem["VmRSS"] / 1024, "peak_rss_mb": mem["VmHWM"] / 1024,
            "history_entries": len(json.loads(history)), "history_bytes": len(history),
            "runs": len(json.loads(runs)["runs"]), "runs_bytes": len(runs)}


def wait_idle(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = server.get("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        if server.proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited; log tail:\n{server.log_tail()}")
        time.sleep(0.2)
    raise SystemExit(f"the queue did not empty within {timeout}s; log tail:\n{server.log_tail()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--steps", type=int, default=4, help="KSampler steps per prompt")
    ap.add_argument("--node", default="DitCache.ApplyFirstBlockCache", choices=sorted(NODES))
    ap.add_argument("--batch", type=int, default=25, help="prompts queued before waiting for the queue to empty")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    client = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="dit-cache-soak-") as tmp, comfy_server(Path(tmp)) as server:
        print(f"dit-cache soak: {args.prompts} prompts, {args.node} on the tiny Flux, {args.steps} euler steps, "
              f"ComfyUI pid {server.proc.pid} (pack {PACK}), {os.cpu_count()} CPUs", flush=True)
        status, body = server.post("/prompt", {"prompt": prompt(args.node, 10 ** 6, args.steps), "client_id": client})
        assert status == 200, body
        wait_idle(server, 300)  # warm-up: imports, model build, first sampling
        before = snapshot(server, client)
        rows = [(0, before)]
        ids, t0 = [], time.perf_counter()
        for i in range(args.prompts):
            status, body = server.post("/prompt", {"prompt": prompt(args.node, i, args.steps), "client_id": client})
            assert status == 200, body
            ids.append(body["prompt_id"])
            if (i + 1) % args.batch == 0 or i + 1 == args.prompts:
                wait_idle(server, 600)
                rows.append((i + 1, snapshot(server, client)))
                print(f"  {i + 1:5d} prompts  RSS {rows[-1][1]['rss_mb']:7.1f} MB", file=sys.stderr, flush=True)
        wall = time.perf_counter() - t0
        history = server.get("/history")
        failed = [p for p in ids if history.get(p, {}).get("status", {}).get("status_str") != "success"]
        after = rows[-1][1]

    print(f"{'prompts':>8} {'RSS MB':>8} {'peak MB':>8} {'history':>8} {'history KB':>11} {'runs':>5} {'runs KB':>8}")
    for n, s in rows:
        print(f"{n:8d} {s['rss_mb']:8.1f} {s['peak_rss_mb']:8.1f} {s['history_entries']:8d} "
              f"{s['history_bytes'] / 1024:11.1f} {s['runs']:5d} {s['runs_bytes'] / 1024:8.1f}")
    per = (after["rss_mb"] - before["rss_mb"]) * 1024 / max(args.prompts, 1)
    print(f"{args.prompts} prompts in {wall:.1f} s ({wall / max(args.prompts, 1):.2f} s each), "
          f"{len(failed)} not successful; RSS {before['rss_mb']:.1f} -> {after['rss_mb']:.1f} MB "
          f"({per:+.1f} KB per prompt); ComfyUI history {before['history_bytes'] / 1024:.1f} -> "
          f"{after['history_bytes'] / 1024:.1f} KB; dit-cache runs served {before['runs']} -> {after['runs']} "
          f"({before['runs_bytes'] / 1024:.1f} -> {after['runs_bytes'] / 1024:.1f} KB)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall,
                                         "failed": len(failed), "rows": rows}, indent=1), encoding="utf-8")
    if failed:
        raise SystemExit(f"{len(failed)} prompts did not succeed")


if __name__ == "__main__":
    main()
