# dualseg — every target is idempotent: a second run skips what is already done.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export DUALSEG_PORT ?= 8000
export DUALSEG_DATA_DIR ?= ./var

.PHONY: setup run test lint services clean-var

setup: $(STAMP)

# torch is pinned (==2.13.0) in pyproject.toml, in the same install as monai: without the pin pip
# would resolve a multi-GB CUDA build. pip + venv on purpose (not uv/poetry).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $(STAMP)

run: setup
	$(BIN)/dualseg serve

services:
	@bash scripts/services.sh

test: setup services
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy backend worker

clean-var:
	rm -rf ./var
