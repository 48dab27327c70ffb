# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs the project from the package registries on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo bench k8s topology chaos-test reliability clean

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
	$(PY) -m pytest -n 2 --dist loadfile  # two processes, one test file each at a time

# The chaos suite (tests/chaos, marked `chaos`, left out of `make test`): faults under load
# against real processes, in a short form (about 7 minutes on 2 cores).
chaos-test: install
	$(PY) -m pytest -m chaos tests/chaos

# Its full-length figures: docs/reliability.md and bench/reliability.json.
reliability: install
	$(VENV)/bin/stream-worker chaos --markdown docs/reliability.md --json bench/reliability.json

demo: install
	$(VENV)/bin/stream-worker demo

bench: install
	$(VENV)/bin/stream-worker bench --json bench/latest.json

# deploy/k8s: regenerate the PrometheusRule and dashboard ConfigMaps from monitoring/, then
# render every overlay with `kubectl kustomize` (Debian: apt-get install kubernetes-client).
k8s: install
	$(PY) -m stream_worker.devtools.k8s --render

# docker-compose.yml's services run natively on loopback from their compose commands:
# PostgreSQL (Debian: apt-get install postgresql), MLflow on it with served artifacts, the
# Prefect server, one trainer run, two workers, Prometheus. About two minutes.
topology: install
	$(PY) -m pytest tests/integration/test_topology.py -v -p no:cacheprovider

clean:
	rm -rf $(VENV) .demo .bench mlruns mlflow.db
