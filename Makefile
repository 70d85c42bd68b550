# Every target works on a fresh checkout: `make test` sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PYTEST_ARGS ?=

.PHONY: setup images test test-fast lint format up up-cpu down bench reap clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,trainer]'
	touch $@

# Images for the Docker tests; skipped (the tests then skip with a reason) when no engine answers.
images:
	@if docker info >/dev/null 2>&1; then bash docker/build-images.sh; \
	else echo "no Docker engine: skipping image build (Docker tests will skip)"; fi

test: setup images
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests and Redis tests only: no Docker, no slow suites.
test-fast: setup
	$(PY) -m pytest -m "not docker and not slow and not e2e" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format services tests bench
	$(VENV)/bin/ruff check --fix services tests bench

up:
	$(COMPOSE) up

up-cpu: images
	$(COMPOSE) -f compose.yaml -f compose.cpu.yaml up

down:
	$(COMPOSE) down

bench: setup images
	$(PY) bench/cycle.py
	$(PY) bench/api_load.py
	$(PY) bench/acceptance.py

reap: setup
	$(VENV)/bin/autoresearch-reap

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
