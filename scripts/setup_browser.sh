#!/usr/bin/env bash
# Installs what the browser test (tests/browser/test_panel_browser.py) needs: Debian's `chromium` (apt-get, when
# /usr/bin/chromium is missing) and `playwright-core` (npm, into the git-ignored .host/node). playwright-core
# downloads no browser; the test drives the system chromium. Re-running is a no-op when both are there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PLAYWRIGHT_VERSION="${DITCACHE_PLAYWRIGHT_VERSION:-1.65.1}"
NODE_DIR="$ROOT/.host/node"
log() { echo "[setup-browser] $*"; }

if [[ ! -x /usr/bin/chromium ]]; then
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  log "installing Debian chromium (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  log "installing nodejs + npm (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# playwright-core 1.65 needs node >= 20; Debian 12's own nodejs is 18: take the last release that runs there
if [[ -z "${DITCACHE_PLAYWRIGHT_VERSION:-}" && "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]]; then
  PLAYWRIGHT_VERSION="1.49.1"
fi
PKG="$NODE_DIR/node_modules/playwright-core/package.json"
if [[ ! -f "$PKG" ]] || ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$PKG"; then
  log "installing playwright-core@$PLAYWRIGHT_VERSION into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  [[ -f "$NODE_DIR/package.json" ]] || echo '{"name": "dit-cache-browser-test", "private": true}' > "$NODE_DIR/package.json"
  (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error \
     "playwright-core@$PLAYWRIGHT_VERSION")
fi
log "ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium), playwright-core $PLAYWRIGHT_VERSION"
