# The front door: every task a newcomer or CI needs is one target here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= gateway.yaml

.PHONY: help install run test lint format bench bench-proxy bench-auth bench-webhooks bench-download soak schema check clean
# `make` alone lists the targets; nothing is installed or started unless a target asks.
.DEFAULT_GOAL := help

help: ## list the targets (what `make` alone does)
	@echo 'make TARGET, one of:'
	@awk '/^[a-z][a-z0-9_-]*:/ { name = $$1; sub(/:.*/, "", name); text = ""; \
		if (match($$0, /## /)) text = substr($$0, RSTART + 3); printf "  %-15s %s\n", name, text }' \
		$(MAKEFILE_LIST)
	@echo 'Variables: CONFIG=FILE (run, check; default gateway.yaml), ARGS="..." (flags of'
	@echo '  bench/run.py, e.g. ARGS="--only gateway --duration 5"), WEBHOOK_ARGS="..." (flags of'
	@echo '  bench/webhooks.py, e.g. WEBHOOK_ARGS="--only local --events 500"), DOWNLOAD_ARGS="..."'
	@echo '  (flags of bench/download.py, e.g. DOWNLOAD_ARGS="--size 256MiB"), SOAK_ARGS="..." (flags'
	@echo '  of bench/soak.py), AUTH_ARGS="..." (flags of bench/auth.py, e.g. AUTH_ARGS="--rounds 3"),'
	@echo '  PYTHON=python3.11.'

install: $(VENV)/.installed ## create .venv and install the gateway with its dev tools

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: install ## start the gateway on CONFIG (a demo org and key are made on first start)
	$(BIN)/gateway run -c $(CONFIG)

check: install ## validate CONFIG: print every problem with its path
	$(BIN)/gateway check -c $(CONFIG)

test: install ## the whole test suite with coverage (starts its own redis-server)
	$(BIN)/pytest -p no:cacheprovider --cov --cov-report=term

lint: install ## ruff format --check, ruff check, mypy --strict, lint-imports (package layers)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install ## ruff format and ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schema: install ## regenerate config/gateway.schema.json from the config models
	$(BIN)/gateway schema > config/gateway.schema.json

bench: install ## the four benchmarks below, in turn (wrk, nginx, curl used when installed)
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/auth.py $(AUTH_ARGS)
	$(BIN)/python bench/webhooks.py $(WEBHOOK_ARGS)
	$(BIN)/python bench/download.py $(DOWNLOAD_ARGS)

bench-proxy: install ## requests/s, latency at 50 and 256 connections, issue 13's targets; ARGS="..."
	$(BIN)/python bench/run.py $(ARGS)

bench-auth: install ## what identifying a caller costs: an API key, a JWT, an introspected token; AUTH_ARGS="..."
	$(BIN)/python bench/auth.py $(AUTH_ARGS)

bench-webhooks: install ## webhook delivery rate and latency on each store; WEBHOOK_ARGS="..."
	$(BIN)/python bench/webhooks.py $(WEBHOOK_ARGS)

bench-download: install ## a 1 GiB download through each proxy: MB/s, memory; DOWNLOAD_ARGS="..."
	$(BIN)/python bench/download.py $(DOWNLOAD_ARGS)

soak: install ## 10 minutes of load, key churn, reloads and webhooks: is memory flat? SOAK_ARGS="..."
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean: ## remove .venv, .gateway (state and admin token) and tool caches
	rm -rf $(VENV) .gateway .pytest_cache .mypy_cache .ruff_cache .coverage
