# Two commands for a fresh machine: `make demo` renders a video, `make test` runs the tests.
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup demo test test-fast bench clean-host

setup:
	@bash scripts/setup.sh

PROMPT ?=

demo: setup
	$(PY) scripts/demo.py --out $(OUT) --prompt "$(PROMPT)"

test: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not host and not slow" $(PYTEST_ARGS)

clean-host:
	rm -rf .host
