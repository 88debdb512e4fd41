# The development commands: `make test` (the full suite, what CI runs) and `make test-core` (the core's unit
# tests in seconds, without ComfyUI, a browser or sudo). `make test`, `make demo` and `make bench` build the
# host on first use (.venv + ComfyUI 0.3.75 under .host/, see scripts/setup_host.sh) and are fast to re-run.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: host browser core-venv demo test test-core bench clean-host

host:
	@bash scripts/setup_host.sh

# Debian chromium + playwright-core (in .host/node) for the panel's browser test; instant when installed
browser:
	@bash scripts/setup_browser.sh

demo: host
	$(PY) bench/demo.py

test: host browser
	$(PY) -m pytest $(PYTEST_ARGS)

# .venv with just what the core's tests import (torch, safetensors, numpy, pytest); the host's .venv serves too
core-venv:
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -c "import torch, safetensors, numpy, pytest, pytest_timeout" 2>/dev/null || \
		$(PY) -m pip install --disable-pip-version-check -q "torch==2.14.1" safetensors numpy pytest pytest-timeout

test-core: core-venv
	$(PY) -m pytest tests/core -q $(PYTEST_ARGS)

bench: host
	$(PY) bench/sweep.py

clean-host:
	rm -rf .venv .host
