# Gantry: two front-door commands, `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

# Each area may add its own tool installs to INSTALL_EXTRA and targets in mk/<area>.mk.
INSTALL_EXTRA :=
-include mk/*.mk

.PHONY: all install system-packages demo test lint typecheck pytest bench clean

all: test

# Python packages: the project and its dev extra, into .venv (uv makes a re-run take a second).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet -p $(BIN)/python -e '.[dev]'
	@touch $@

# Debian packages the real components need (container engine, registry, git).
$(SYSTEM_STAMP): deployments/system_packages.sh | $(STAMP)
	bash deployments/system_packages.sh
	@touch $@

install: $(STAMP) $(SYSTEM_STAMP) $(INSTALL_EXTRA)

system-packages: $(SYSTEM_STAMP)

demo: install
	$(BIN)/gantry demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy core flows blocks clients deployments webhooks bench

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench

# `gantry down` ends what runs for the stack (runs, sandboxes, environments) before its
# folder goes: removed with them still running, they would hold their ports as orphans.
clean:
	-$(BIN)/gantry down
	rm -rf $(VENV) .gantry .mypy_cache .ruff_cache .pytest_cache

