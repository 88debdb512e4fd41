# The two commands a newcomer needs: `make demo` and `make test`. Each builds the host on first use
# (.venv + ComfyUI 0.3.75 under .host/, see scripts/setup_host.sh) and is fast to re-run.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: host browser demo test bench clean-host

host:
	@bash scripts/setup_host.sh

# Debian chromium + playwright-core (in .host/node) for the panel's browser test; instant when installed
browser:
	@bash scripts/setup_browser.sh

demo: host
	$(PY) bench/demo.py

test: host browser
	$(PY) -m pytest $(PYTEST_ARGS)

bench: host
	$(PY) bench/sweep.py

clean-host:
	rm -rf .venv .host
