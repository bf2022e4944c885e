# The front door: every task a newcomer or CI needs is one target here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= gateway.yaml

.PHONY: install run test lint format bench schema check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: install
	$(BIN)/gateway run -c $(CONFIG)

check: install
	$(BIN)/gateway check -c $(CONFIG)

test: install
	$(BIN)/pytest -p no:cacheprovider --cov --cov-report=term

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schema: install
	$(BIN)/gateway schema > config/gateway.schema.json

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/webhooks.py

clean:
	rm -rf $(VENV) .gateway .pytest_cache .mypy_cache .ruff_cache .coverage
