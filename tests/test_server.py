"""End-to-end tests against a real ComfyUI server (``main.py``) with this pack installed.

One server per module, started from the host ComfyUI (``.host/ComfyUI``) on CPU, on a free loopback port,
with every writable folder (output, temp, input, user, sqlite database) in a temporary directory, so nothing
is written inside ``.host``. The test-only node pack ``tests/support/test_nodes/dit_cache_test_loader``
(node "DitCacheTest.TinyModelLoader": a tiny random model of a real ComfyUI class, no checkpoint needed) is
loaded through an ``--extra-model-paths-config`` YAML with a ``custom_nodes:`` entry; it is never copied into
ComfyUI's own ``custom_nodes`` folder.

Select with ``-m server`` (or deselect with ``-m "not server"``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import comfy_env

pytestmark = pytest.mark.server

REPO = comfy_env.REPO
COMFY_DIR = comfy_env.COMFY_DIR
TEST_NODES = REPO / "tests" / "support" / "test_nodes"
STARTUP_TIMEOUT_S = 120
PROMPT_TIMEOUT_S = 120

FBC_NODE = "DitCache.ApplyFirstBlockCache"
LOADER_NODE = "DitCacheTest.TinyModelLoader"
FBC_INPUTS = ("model", "threshold", "start_percent", "end_percent", "max_consecutive_skips", "warmup_steps")
# "[dit-cache] FirstBlockCache: skipped X/Y model calls ..." (nodes/comfy_host.py, cache_core/stats.py)
SKIP_LINE = re.compile(r"\[dit-cache\] FirstBlockCache: skipped (\d+)/(\d+) model calls")
# ComfyUI's summary after loading custom nodes: "   0.1 seconds (IMPORT FAILED): /path/to/pack"
IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+?)\s*$", re.MULTILINE)


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    output_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        """POST JSON; returns (status, decoded JSON body) for success and HTTP error statuses alike."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def _free_port() -> int:
    # Ask the OS for a free port; a small race with other processes until the server binds it is accepted.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {server.proc.returncode} during start-up; log tail:\n"
                        f"{server.log_tail()}")
        try:
            server.get("/object_info")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"ComfyUI did not answer /object_info within {STARTUP_TIMEOUT_S}s; log tail:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (it is the group leader), then kill what is left."""
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("comfy_server")
    dirs = {name: root / name for name in ("output", "temp", "input", "user")}
    for d in dirs.values():
        d.mkdir()
    # utils/extra_config.py: top-level sections map folder names (here "custom_nodes") to paths;
    # absolute paths are used as they are.
    extra_config = root / "extra_model_paths.yaml"
    extra_config.write_text(f"dit_cache_tests:\n  custom_nodes: {json.dumps(str(TEST_NODES))}\n",
                            encoding="utf-8")
    port = _free_port()
    cmd = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",  # no network here; also a faster start
        "--output-directory", str(dirs["output"]),
        "--temp-directory", str(dirs["temp"]),  # ComfyUI uses <this>/temp
        "--input-directory", str(dirs["input"]),
        "--user-directory", str(dirs["user"]),
        # ComfyUI 0.3.75 creates a sqlite database (default .host/ComfyUI/user/comfyui.db) at start-up
        "--database-url", f"sqlite:///{root / 'comfyui.db'}",
        "--extra-model-paths-config", str(extra_config),
    ]
    # Unbuffered, so that a log line written during a prompt is in the file once the prompt is done.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server(proc, port, log_path, dirs["output"])
    try:
        _wait_until_up(srv)
        yield srv
    finally:
        _stop(proc)
        assert proc.poll() is not None, f"ComfyUI (pid {proc.pid}) is still running"
        # No process of the server's group (a worker, a child) may outlive it.
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)


def _prompt(family: str, threshold: float, cfg: float, *, start_percent: float = 0.0,
            end_percent: float = 1.0) -> dict:
    """API-format prompt: tiny model -> Apply FirstBlockCache -> KSampler -> SaveLatent."""
    return {
        "1": {"class_type": LOADER_NODE, "inputs": {"family": family, "seed": 0, "batch_size": 1}},
        "2": {"class_type": FBC_NODE, "inputs": {
            "model": ["1", 0], "threshold": threshold, "start_percent": start_percent,
            "end_percent": end_percent, "max_consecutive_skips": -1, "warmup_steps": 0}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 12, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": f"latents/{family}"}},
    }


def _wait_for_history(server: Server, prompt_id: str) -> dict:
    """Poll /history/<id> until the prompt has finished (ComfyUI adds the entry when it is done)."""
    deadline = time.monotonic() + PROMPT_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            return entry
        if server.proc.poll() is not None:
            pytest.fail(f"ComfyUI exited while running the prompt; log tail:\n{server.log_tail()}")
        time.sleep(0.2)
    pytest.fail(f"prompt {prompt_id} did not finish within {PROMPT_TIMEOUT_S}s; log tail:\n{server.log_tail()}")


def _wait_for_log(server: Server, offset: int, pattern: re.Pattern, timeout: float = 10.0) -> list[re.Match]:
    """Matches of ``pattern`` in the log written after character ``offset``, waiting briefly for one."""
    deadline = time.monotonic() + timeout
    while True:
        matches = list(pattern.finditer(server.log()[offset:]))
        if matches or time.monotonic() > deadline:
            return matches
        time.sleep(0.1)


def test_object_info_lists_nodes_and_pack_imports_cleanly(server: Server):
    info = server.get("/object_info")
    assert LOADER_NODE in info
    assert FBC_NODE in info
    node = info[FBC_NODE]
    assert node["category"] == "dit-cache"
    assert node["description"]
    required = node["input"]["required"]
    assert tuple(node["input_order"]["required"]) == FBC_INPUTS
    assert required["model"][0] == "MODEL"
    for name in FBC_INPUTS:
        tooltip = required[name][1].get("tooltip")
        assert isinstance(tooltip, str) and tooltip.strip(), f"input {name!r} has no tooltip"
    assert required["threshold"][0] == "FLOAT"
    assert required["threshold"][1]["min"] == 0.0 and required["threshold"][1]["max"] == 1.0
    assert node["output"] == ["MODEL"]
    assert all(node["output_tooltips"])

    # ComfyUI's import summary names every custom-node pack it tried; ours must be there without a failure
    # (other lines, e.g. comfy_extras needing torchaudio, may say IMPORT FAILED on this host).
    log = server.log()
    by_path = {os.path.realpath(path): failed for failed, path in IMPORT_LINE.findall(log)}
    for pack_dir in (REPO, TEST_NODES / "dit_cache_test_loader"):
        assert str(pack_dir) in by_path, f"{pack_dir} not in ComfyUI's import summary; log tail:\n" \
                                         f"{server.log_tail()}"
        assert not by_path[str(pack_dir)], f"ComfyUI reports IMPORT FAILED for {pack_dir}:\n{log}"
    for line in log.splitlines():
        if "IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line:
            assert "dit-cache" not in line and "dit_cache" not in line, line


# The first call of a run always computes (there is no reference residual yet), so X < Y holds whenever the
# cache is in the loop; the thresholds are the "aggressive" settings of test_fbc_comfy.py, above the tiny
# models' step-to-step FBC metric for part of the run (a batched cond+uncond call skips only when both
# streams may), so some calls skip and some compute.
@pytest.mark.parametrize("family,threshold,cfg,shape", [
    ("flux", 0.12, 1.0, (1, 16, 16, 16)),
    ("wan21", 0.08, 4.0, (1, 16, 2, 8, 8)),  # cfg > 1: cond and uncond
])
def test_cached_sampling_over_http(server: Server, family: str, threshold: float, cfg: float, shape: tuple):
    log_offset = len(server.log())
    status, body = server.post("/prompt", {"prompt": _prompt(family, threshold, cfg),
                                           "client_id": uuid.uuid4().hex})
    assert status == 200, body
    assert body["node_errors"] == {}
    entry = _wait_for_history(server, body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    assert entry["status"]["completed"] is True

    saved = entry["outputs"]["4"]["latents"]
    assert len(saved) == 1
    path = server.output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file(), f"{path} missing"
    from safetensors.torch import load_file
    import torch
    latent = load_file(str(path))["latent_tensor"]
    assert tuple(latent.shape) == shape
    assert torch.isfinite(latent).all()

    # The server-side run went through the cache: some, but not all, model calls skipped.
    matches = _wait_for_log(server, log_offset, SKIP_LINE)
    assert len(matches) == 1, f"expected one FirstBlockCache summary; log tail:\n{server.log_tail()}"
    skipped, calls = int(matches[0][1]), int(matches[0][2])
    assert calls == 12  # one call per euler step (cond and uncond are batched into one call)
    assert 0 < skipped < calls, matches[0][0]


def test_invalid_window_rejected_at_validation(server: Server):
    log_offset = len(server.log())
    history_before = server.get("/history")
    status, body = server.post("/prompt", {"prompt": _prompt("flux", 0.6, 1.0, start_percent=0.9, end_percent=0.1),
                                           "client_id": uuid.uuid4().hex})
    assert status == 400, body
    assert "2" in body["node_errors"], body
    assert "start_percent" in json.dumps(body["node_errors"]["2"]), body
    # Nothing was queued or sampled.
    assert "prompt_id" not in body
    queue = server.get("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    assert server.get("/history").keys() == history_before.keys()
    assert not SKIP_LINE.search(server.log()[log_offset:])
