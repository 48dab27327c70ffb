# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs the project from the package registries on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

demo: install
	$(VENV)/bin/stream-worker demo

bench: install
	$(VENV)/bin/stream-worker bench --json bench/latest.json

clean:
	rm -rf $(VENV) .demo .bench mlruns mlflow.db
