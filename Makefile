# Every target works on a fresh checkout: `make test` sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
# docker compose v2 where the plugin exists, else docker-compose v1.
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
CPU_FILES := -f compose.yaml -f compose.cpu.yaml
PYTEST_ARGS ?=

.PHONY: setup wheels images test test-fast lint format up up-cpu down down-cpu cuda-smoke bench fuzz reap clean

setup: $(VENV)/.installed

# torch 2.13.0, hash-pinned: a local CPU wheel, else PyTorch's CPU index, else PyPI's CUDA build
# (docker/install-torch.sh). Every package the services image pins is pinned here too (its lock, read
# as constraints), so the tests run the versions that ship, not whatever PyPI released since.
$(VENV)/.installed: pyproject.toml docker/lock/torch-cpu.lock docker/lock/torch-cuda.lock docker/lock/services.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sh docker/install-torch.sh $(PY) docker/lock docker/wheels
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ;]*\).*/\1/p' docker/lock/services.lock > $(VENV)/services-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/services-constraints.txt -e '.[server,dev,trainer]'
	touch $@

# torch's CPU wheel into docker/wheels/ when this machine has one locally (image builds use it).
wheels:
	@bash docker/local-wheels.sh

# Images for the Docker tests; skipped (the tests then skip with a reason) when no engine answers.
images:
	@if docker info >/dev/null 2>&1; then bash docker/build-images.sh; \
	else echo "no Docker engine: skipping image build (Docker tests will skip)"; fi

test: setup images
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests and Redis tests only: no Docker, no slow suites.
test-fast: setup
	$(PY) -m pytest -m "not docker and not slow and not e2e" $(PYTEST_ARGS)

# ruff and mypy --strict on services/ and trainer/ (trainer/train.py's relaxed rules: pyproject.toml).
lint: setup
	$(VENV)/bin/ruff format --check services trainer tests bench
	$(VENV)/bin/ruff check services trainer tests bench
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format services trainer tests bench
	$(VENV)/bin/ruff check --fix services trainer tests bench

# The stack, built by compose itself. A failing prepare (bad corpus) stops `up`; its log is shown.
up:
	$(COMPOSE) up --build || { $(COMPOSE) logs --no-color --tail 20 prepare; exit 1; }

up-cpu: wheels
	$(COMPOSE) $(CPU_FILES) up --build || { $(COMPOSE) $(CPU_FILES) logs --no-color --tail 20 prepare; exit 1; }

down:
	$(COMPOSE) down

down-cpu:
	$(COMPOSE) $(CPU_FILES) down

# Build the cuda trainer image and check it on this machine's CPU (docker/cuda-smoke.sh).
cuda-smoke: setup
	bash docker/cuda-smoke.sh

bench: setup images
	$(PY) bench/cycle.py
	$(PY) bench/api_load.py
	$(PY) bench/acceptance.py

# Schemathesis, every phase and every check, by hand (bench/fuzz_api.py): FUZZ_ARGS="--seed 12345 --max-examples 80"
FUZZ_ARGS ?=
fuzz: setup
	$(PY) bench/fuzz_api.py $(FUZZ_ARGS)

reap: setup
	$(VENV)/bin/autoresearch-reap

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
