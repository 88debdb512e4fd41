"""Running a browser driver (``tests/browser/*.mjs``, built on ``common.mjs``'s ``drive``) against a real server:
the config file it reads, the process, and its ``RESULT`` line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from comfy_server import REPO, Server

NODE_DIR = REPO / ".host" / "node"
CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    missing = [str(p) for p in (Path(CHROMIUM), NODE_DIR / "node_modules" / "playwright-core") if not p.exists()]
    if missing or shutil.which("node") is None:
        pytest.fail(f"browser test needs chromium, node and playwright-core ({', '.join(missing) or 'node'} "
                    f"missing): run scripts/setup_browser.sh (make test does)")


def run_driver(driver: Path, server: Server, tmp_path: Path, config: dict[str, Any], timeout: int = 180) -> dict:
    """Run ``driver`` with ``config`` (plus url, outDir, nodeDir, chromium, userDataDir, timeoutMs) against
    ``server``; its RESULT, checked for errors. Screenshots go to ``tmp_path / "screenshots"``."""
    # a fresh user folder: skip the first-start template browser
    req = urllib.request.Request(server.url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    out_dir = tmp_path / "screenshots"
    out_dir.mkdir(exist_ok=True)
    path = tmp_path / "driver.json"
    path.write_text(json.dumps({
        "url": server.url + "/", "outDir": str(out_dir), "nodeDir": str(NODE_DIR), "chromium": CHROMIUM,
        "userDataDir": str(tmp_path / "chromium-profile"), "timeoutMs": 60_000, **config,
    }), encoding="utf-8")
    proc = subprocess.run(["node", str(driver), str(path)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"driver printed no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    res = json.loads(line[len("RESULT "):])
    assert "error" not in res, f"{res['error']}\nsteps: {res['steps']}\nconsole: {res['console']}\n" \
                               f"server log:\n{server.log_tail()}"
    return res
