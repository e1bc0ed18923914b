# Two commands for a fresh machine: `make demo` renders a video, `make test` runs the tests.
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup demo test test-fast bench clean-host

setup:
	@bash scripts/setup.sh

PROMPT ?=

# the embedded text-to-video workflow, headless through a local ComfyUI; PROMPT goes to its "Prompt" node
demo: setup
	$(VENV)/bin/spacetime-video run "workflows/Text to video - Embedded (CPU).json" --out $(OUT) --base-dir .host/base \
		$(if $(PROMPT),--set "Prompt.prompt=$(PROMPT)")

test: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not host and not slow" $(PYTEST_ARGS)

clean-host:
	rm -rf .host
