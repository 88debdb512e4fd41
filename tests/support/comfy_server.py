"""A real ComfyUI server (``main.py``) with this pack, as a subprocess for end-to-end tests.

Started from the host ComfyUI (``.host/ComfyUI``) on CPU, on a free loopback port, with ComfyUI's base directory
(``--base-directory``: models, custom_nodes, output, temp, input, user) and the sqlite database under a given
temporary directory, so nothing is written inside ``.host``.

The pack the server loads is the repository under test (``PACK``: this checkout, or ``DITCACHE_SERVER_PACK``),
never the host's ``custom_nodes/dit-cache`` link (which points at whichever checkout built the host): the
temporary base directory's ``custom_nodes`` holds one entry, ``dit-cache``, a symlink to ``PACK``, and with
``--base-directory`` ComfyUI lists no other ``custom_nodes`` folder than that one and the YAML's below. Its import
summary names the pack's real path (``tests/server/test_server.py`` checks that it is ``PACK`` and that no
other dit-cache was imported). Calibrations go to ``<root>/models/magcache``.

The test-only node pack ``tests/support/test_nodes/dit_cache_test_loader`` (node
"DitCacheTest.TinyModelLoader": a tiny random model of a real ComfyUI class, no checkpoint needed) is loaded
through an ``--extra-model-paths-config`` YAML with a ``custom_nodes:`` entry; it is never copied into
ComfyUI's own ``custom_nodes`` folder. Used by ``tests/server/`` and ``tests/browser/test_panel_browser.py``;
``module_server`` is the fixture ``server`` (one server per module) for a test module that imports it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import comfy_env

REPO = comfy_env.REPO
COMFY_DIR = comfy_env.COMFY_DIR
TEST_NODES = REPO / "tests" / "support" / "test_nodes"
# the dit-cache checkout the server loads: the repository these tests belong to, unless told otherwise
PACK = Path(os.environ.get("DITCACHE_SERVER_PACK", REPO)).resolve()
STARTUP_TIMEOUT_S = 120
PROMPT_TIMEOUT_S = 120


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

    def wait_for_history(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """Poll /history/<id> until the prompt has finished (ComfyUI adds the entry when it is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited while running the prompt; log tail:\n{self.log_tail()}")
            time.sleep(0.2)
        pytest.fail(f"prompt {prompt_id} did not finish within {timeout}s; log tail:\n{self.log_tail()}")


def free_port() -> int:
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


@contextlib.contextmanager
def comfy_server(root: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ComfyUI with its writable folders under ``root`` (``env``: extra environment variables of the server
    process); stop it (and its whole process group) on exit."""
    dirs = {name: root / name for name in ("output", "temp", "input", "user", "custom_nodes")}
    for d in dirs.values():
        d.mkdir()
    # the pack under test, under the name the host's link has (ComfyUI serves its web folder as
    # /extensions/dit-cache)
    (dirs["custom_nodes"] / "dit-cache").symlink_to(PACK, target_is_directory=True)
    # utils/extra_config.py: top-level sections map folder names (here "custom_nodes") to paths;
    # absolute paths are used as they are.
    extra_config = root / "extra_model_paths.yaml"
    extra_config.write_text(f"dit_cache_tests:\n  custom_nodes: {json.dumps(str(TEST_NODES))}\n",
                            encoding="utf-8")
    port = free_port()
    cmd = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",  # no network here; also a faster start
        # models/, custom_nodes/ (and the folders set below) under root: the host's custom_nodes is not listed
        "--base-directory", str(root),
        "--output-directory", str(dirs["output"]),
        "--temp-directory", str(dirs["temp"]),  # ComfyUI uses <this>/temp
        "--input-directory", str(dirs["input"]),
        "--user-directory", str(dirs["user"]),
        # ComfyUI 0.3.75 creates a sqlite database (default .host/ComfyUI/user/comfyui.db) at start-up
        "--database-url", f"sqlite:///{root / 'comfyui.db'}",
        "--extra-model-paths-config", str(extra_config),
    ]
    # Unbuffered, so that a log line written during a prompt is in the file once the prompt is done.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
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


@pytest.fixture(scope="module", name="server")
def module_server(tmp_path_factory) -> Iterator[Server]:
    """The fixture ``server`` for a test module that imports it: one server per module, stopped after it."""
    with comfy_server(tmp_path_factory.mktemp("comfy_server")) as srv:
        yield srv
