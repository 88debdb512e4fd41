#!/usr/bin/env bash
# Builds the second test host: upstream ComfyUI 0.8.0 under .host080/ComfyUI, from the source tarball in the
# shared hosts folder (never copied into the project). It runs on the first host's .venv (scripts/setup_host.sh
# builds it first): whatever 0.8.0 needs that .venv lacks or holds at another version (its frontend, workflow
# templates, comfy-kitchen) goes into the overlay .host080/site, which only 0.8.0 processes put first on
# PYTHONPATH (scripts/test_host_080.sh), so .venv stays exactly what 0.3.75 runs with. Re-running is a no-op
# when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARBALL_NAME="comfyui-0.8.0.tar.gz"
TARBALL_SHA256="9d0aeb45081a2d38f0e6b19593b09db2254413b7ba1b58a7b36e8bfc5e220c71"
HOST="$ROOT/.host080"
COMFY="$HOST/ComfyUI"
SITE="$HOST/site"
VPY="$ROOT/.venv/bin/python"
STAMP="$HOST/.dit-cache-host080.stamp"
log() { echo "[setup-080] $*"; }
die() { echo "[setup-080] ERROR: $*" >&2; exit 1; }

# The tarball: $DITCACHE_SHARED/hosts/, else the shared folder beside the checkout, else /work/shared/hosts/.
candidates=()
[[ -n "${DITCACHE_SHARED:-}" ]] && candidates+=("$DITCACHE_SHARED/hosts/$TARBALL_NAME")
candidates+=("$ROOT/../shared/hosts/$TARBALL_NAME" "/work/shared/hosts/$TARBALL_NAME")
TARBALL=""
for c in "${candidates[@]}"; do
  if [[ -f "$c" ]]; then TARBALL="$c"; break; fi
done
[[ -n "$TARBALL" ]] || die "$TARBALL_NAME not found; looked at: ${candidates[*]}. Set DITCACHE_SHARED to the folder that holds hosts/$TARBALL_NAME."
[[ "$(sha256sum "$TARBALL" | cut -d' ' -f1)" == "$TARBALL_SHA256" ]] || die "$TARBALL: sha256 is not $TARBALL_SHA256"
[[ -x "$VPY" ]] || die "$VPY missing: run scripts/setup_host.sh first (make host080 does)"

want="$(sha256sum < "$ROOT/scripts/setup_host_080.sh" | cut -c1-16) $TARBALL_SHA256"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$COMFY/main.py" && -e "$COMFY/custom_nodes/dit-cache" ]]; then
  echo "[setup-080] host up to date ($COMFY)"
  exit 0
fi
t0=$(date +%s)
rm -f "$STAMP"

log "unpacking $TARBALL"
rm -rf "$COMFY" "$HOST/unpack"
mkdir -p "$HOST/unpack"
tar -xzf "$TARBALL" -C "$HOST/unpack"
mv "$HOST/unpack/ComfyUI-0.8.0" "$COMFY"
rm -rf "$HOST/unpack"
grep -q "0.8.0" "$COMFY/comfyui_version.py" || die "$COMFY/comfyui_version.py does not say 0.8.0"

# ComfyUI's requirements (torch, torchvision from .venv; torchaudio has no matching build: only audio nodes
# need it) plus requests, which main.py imports and the file omits. pip's dry run against .venv lists exactly
# what is missing there or pinned differently; those go into the overlay at the versions pip chose.
grep -v -E '^\s*torch(audio|vision)?\s*$' "$COMFY/requirements.txt" > "$HOST/requirements.txt"
echo "requests" >> "$HOST/requirements.txt"
log "resolving 0.8.0's requirements against .venv"
"$VPY" -m pip install --disable-pip-version-check -q --dry-run --report "$HOST/report.json" \
  -r "$HOST/requirements.txt" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# into a file first: a process substitution's exit status is ignored even under set -e
"$VPY" - "$HOST/report.json" > "$HOST/pins.txt" <<'PYEOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"].lower().replace("_", "-") in ("torch", "torchvision", "torchaudio"):
        sys.exit(f"0.8.0's requirements would change {meta['name']} in .venv: not supported")
    print(f"{meta['name']}=={meta['version']}")
PYEOF
mapfile -t pins < "$HOST/pins.txt"
rm -rf "$SITE"
mkdir -p "$SITE"
if (( ${#pins[@]} )); then
  log "overlay $SITE: ${pins[*]}"
  "$VPY" -m pip install --disable-pip-version-check -q --no-deps --target "$SITE" "${pins[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
fi

mkdir -p "$COMFY/custom_nodes"
ln -sfn "$ROOT" "$COMFY/custom_nodes/dit-cache"
echo "$want" > "$STAMP"
log "done in $(( $(date +%s) - t0 )) s"
