# dualseg — every target is idempotent: a second run skips what is already done.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export DUALSEG_PORT ?= 8000
export DUALSEG_DATA_DIR ?= ./var

.PHONY: setup ui run test lint services clean-var

UI_DIR  := backend/ui
NIIVUE  := $(UI_DIR)/node_modules/@niivue/niivue/dist/index.js

setup: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory ui; \
	else echo "setup: npm not found, skipping 'make ui': the review page needs the NiiVue bundle (install Node.js + npm, then run 'make ui')"; fi

# torch is pinned (==2.13.0) in pyproject.toml, in the same install as monai: without the pin pip
# would resolve a multi-GB CUDA build. pip + venv on purpose (not uv/poetry). MONAI Label's client
# (tests/e2e/test_monailabel.py) comes without its dependencies: they would pull torch extras.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps monailabel==0.8.5  # see pyproject.toml
	@touch $(STAMP)

# The review page's only dependency: NiiVue, pinned in backend/ui/package.json + package-lock.json
# (npm ci: exactly the locked versions), served from backend/ui/node_modules at /ui/vendor/niivue/.
ui: $(NIIVUE)

$(NIIVUE): $(UI_DIR)/package.json $(UI_DIR)/package-lock.json
	cd $(UI_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	$(BIN)/dualseg serve

services:
	@bash scripts/services.sh

test: setup services
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy backend worker bench

clean-var:
	rm -rf ./var
