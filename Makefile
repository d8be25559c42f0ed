# Everything a fresh machine needs, from Python 3.11, Node 20 and make alone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test lint unit bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## make run: install, then start the embedded coordinator with a local on-demand pool
run: $(STAMP)
	$(VENV)/bin/gigafactory local

## make test: install everything the tests need (Python and npm), lint, run the whole suite
test: $(STAMP) $(NODE_STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check gigafactory tests bench function_app.py
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/api

bench: $(STAMP)
	$(PY) bench/intake.py
	$(PY) bench/e2e.py

clean:
	rm -rf $(VENV) node_modules .gigafactory .pytest_cache .mypy_cache .ruff_cache
