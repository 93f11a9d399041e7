# Leadback — `make help` lists the targets. Everything installs what it needs first.
SHELL := /bin/bash
# The first interpreter that really runs and is 3.11+ (pyenv shims may exist but not run).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install run test lint format typecheck unit integration bench bench-deps clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is needed: install python3 (3.11 or newer)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) \
		|| { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# The benchmarks' extras (matplotlib for the freshness plot) on top of the dev install.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@

install: $(STAMP) ## create .venv and install Leadback with its dev tools

run: $(STAMP) ## start the whole embedded stack (broker + chDB + ingest + segmenter); Ctrl-C stops it
	$(BIN)/leadback up

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: $(STAMP) ## mypy --strict on src/
	$(BIN)/mypy --strict src

unit: $(STAMP) ## unit tests only
	$(BIN)/pytest -q -m "not integration"

integration: $(STAMP) ## integration tests (real broker process, real ClickHouse engine)
	$(BIN)/pytest -q -m integration

test: lint typecheck ## ruff, mypy --strict, then the whole pytest suite
	$(BIN)/pytest -q

bench-deps: ## install nginx-light and wrk (apt-get), the ingest benchmark's anchor and load generator, if missing
	@{ command -v nginx >/dev/null || test -x /usr/sbin/nginx; } && command -v wrk >/dev/null \
		|| { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk; }

bench: $(BENCH_STAMP) bench-deps ## benchmarks: ingest vs nginx and a naive app, audience cost and freshness, signal feed, segmenter, dispatcher
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.audiences
	$(BIN)/python -m bench.feed
	@if test -f bench/segmenter.py; then echo "$(BIN)/python -m bench.segmenter"; $(BIN)/python -m bench.segmenter; fi
	$(BIN)/python -m bench.dispatcher

clean: ## remove the virtualenv, caches and local data
	rm -rf $(VENV) .leadback .mypy_cache .ruff_cache .pytest_cache .hypothesis bench/.data
