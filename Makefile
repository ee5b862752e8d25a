# Quick start:  make serve   (install, train into the local BentoML store if it is empty, serve)
#               make test    (install, run the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train train-if-empty serve stream test lint check build container test-container models clean

# uv (from PyPI, into the venv) installs the project several times faster than pip (README: a fresh clone);
# plain pip where uv cannot be installed or its install fails
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if $(BIN)/python -m pip install --quiet uv && $(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]"; \
	then :; else \
	  $(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -e ".[dev]"; \
	fi
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m training.train_all

# training into an empty store leaves the tracked reports alone (`make train` rewrites them)
train-if-empty: $(STAMP)
	$(BIN)/python -m training.train_all --if-missing --threat-reports-dir none --attack-reports-dir none

# loopback by default: HOST=0.0.0.0 make serve to listen on every interface
serve: train-if-empty
	$(BIN)/bentoml serve service:NIDSService --host $${HOST:-127.0.0.1} --port $${PORT:-3000}

stream: train-if-empty  # the Kafka stream worker (docs/stream.md): NIDS_KAFKA_BOOTSTRAP_SERVERS=host:9092 make stream
	$(BIN)/python -m nids.stream

# on 2 xdist workers (CI has 2 cores), each module whole on one worker (tests/conftest.py); TEST_WORKERS=0 runs
# serially, TEST_WORKERS=auto one worker per core (each integration module starts its own server: memory)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

check: $(STAMP)
	$(BIN)/python -m nids.check threat_detector:latest
	$(BIN)/python -m nids.check attack_classifier:latest

build: train-if-empty
	$(BIN)/bentoml build

# the image of the latest Bento (deploy/container.sh: registry base, or a local Debian base where none answers)
container: build
	BENTOML=$(BIN)/bentoml deploy/container.sh

# build, run and load-balance the image for real (a Docker engine, started as root when none answers)
test-container: $(STAMP)
	$(BIN)/python -m pytest -m container tests/container

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- model lifecycle without a server (docs/models.md): make models ARGS="list", ARGS="activate <tag>", ...
models: $(STAMP)
	$(BIN)/python -m nids.models.cli $(ARGS)
