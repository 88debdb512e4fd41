# The development commands: `make test` (what CI runs: the full suite on ComfyUI 0.3.75, then the compatibility
# subset on ComfyUI 0.8.0) and `make test-core` (the core's unit tests in seconds, without ComfyUI, a browser or
# sudo). `make test`, `make demo` and `make bench` build the host on first use (.venv + ComfyUI 0.3.75 under
# .host/, see scripts/setup_host.sh) and are fast to re-run; `make test` also builds the second host
# (ComfyUI 0.8.0 under .host080/ from ../shared/hosts/, see scripts/setup_host_080.sh).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: host host080 browser core-venv demo test test-080 test-core bench clean-host

host:
	@bash scripts/setup_host.sh

# ComfyUI 0.8.0 from the shared source tarball into .host080/ComfyUI, on .venv plus the .host080/site overlay
host080: host
	@bash scripts/setup_host_080.sh

# Debian chromium + playwright-core (in .host/node) for the panel's browser test; instant when installed
browser:
	@bash scripts/setup_browser.sh

demo: host
	$(PY) bench/demo.py

# both hosts run even when the first fails; non-zero when either failed
test: host browser host080
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; bash scripts/test_host_080.sh $(PYTEST_ARGS) || rc=$$?; exit $$rc

# the compatibility subset on ComfyUI 0.8.0 alone (server, browser, a covering subset of the support matrix)
test-080: host browser host080
	bash scripts/test_host_080.sh $(PYTEST_ARGS)

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
	rm -rf .venv .host .host080
