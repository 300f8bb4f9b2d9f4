# Targets: demo (load the sandbox CRM into DuckDB), test, dev (dagster dev on the sandbox),
# bench (benchmarks into docs/benchmarks.md), cassettes (re-record HTTP cassettes), lint.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo dev test test-fast lint format bench cassettes browser clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/python -m crm_dagster.demo

dev: $(INSTALLED)
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/python -m crm_dagster.demo --dev

# Debian's chromium for the UI test; this machine cannot download a browser of Playwright's own.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && apt-get install -y -q chromium; \
	  else \
	    echo "chromium is not installed: the UI test will be skipped (apt-get install chromium)"; \
	  fi; }

test: $(INSTALLED) browser
	$(BIN)/python -m pytest

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow"

lint: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(INSTALLED)
	$(BIN)/python bench/suite.py

cassettes: $(INSTALLED)
	$(BIN)/python -m crm_dagster_tests.recording

clean:
	rm -rf $(VENV) data .pytest_cache
