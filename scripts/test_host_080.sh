#!/usr/bin/env bash
# The compatibility subset on the second host, ComfyUI 0.8.0 (scripts/setup_host_080.sh builds it; make test
# runs this after the full suite on 0.3.75): the server tests (routes, websocket events, bad input, example
# workflows), a covering subset of the support matrix (each family and each method at least once) and the
# browser panel test. Its own pytest process: 0.8.0 on sys.path, its overlay packages first on PYTHONPATH.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f .host080/ComfyUI/main.py ]] || { echo "[test-080] no .host080/ComfyUI: run scripts/setup_host_080.sh (make host080)" >&2; exit 1; }
export DITCACHE_COMFYUI="$ROOT/.host080/ComfyUI" DITCACHE_COMPAT=1
export PYTHONPATH="$ROOT/.host080/site${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
rc=0
.venv/bin/python -m pytest tests/server tests/browser tests/comfy/test_matrix.py "$@" || rc=$?
echo "[test-080] ComfyUI 0.8.0 subset: exit $rc in $(( $(date +%s) - t0 )) s"
exit "$rc"
