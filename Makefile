# latentlab from a fresh clone with only Python 3.11+:
#   make up      set up .venv (once; again only when pyproject.toml changes) and run everything here
#   make test    the test suite (SQLite; again on PostgreSQL when LATENTLAB_TEST_POSTGRES_URL is set)
#   make lint    ruff and the import contracts
# Knobs: make up PORT=8080 HOST=0.0.0.0 WORKERS=2 · make test PYTEST_ARGS='-x -k up'
#        TORCH_SPEC=… TORCH_INDEX_URL=… PYTHON=python3.12

SHELL := /bin/bash
.DEFAULT_GOAL := help

# the first of these that runs and is 3.11 or newer (a pyenv shim of an absent version does not run)
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
# torch goes in first and on its own: a bare `pip install torch` on Linux pulls the multi-GB CUDA build.
# For a CPU-only torch from PyTorch's own index: make up TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
EXTRAS ?= dev
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

BIN := $(VENV)/bin
# the stamp names what was installed: a changed pyproject.toml, torch spec or extras re-runs the setup
SETUP_KEY := $(shell { cat pyproject.toml; echo "$(TORCH_SPEC) $(TORCH_INDEX_URL) $(EXTRAS)"; } | sha256sum | cut -c1-16)
STAMP := $(VENV)/.setup-$(SETUP_KEY)

.PHONY: help setup up test lint docs clean-venv

help:
	@sed -n '1,6p' Makefile | sed 's/^# \{0,1\}//'

setup: $(STAMP)

$(STAMP):
	@test -n "$(PYTHON)" || { echo "No Python 3.11 or newer found; install one (or make PYTHON=/path/to/python)." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "$(PYTHON) is $$($(PYTHON) -V 2>&1); latentlab needs Python 3.11 or newer (make PYTHON=python3.12)." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "Could not create $(VENV); on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.setup-*
	@touch $@

up: setup
	$(BIN)/latentlab up --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: setup
	scripts/test.sh $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

docs: setup
	$(BIN)/python scripts/config_table.py --write

clean-venv:
	rm -rf $(VENV)
