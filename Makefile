# driftloop: the commands a newcomer runs. `make demo` and `make test` set up whatever is
# missing first; a second `make setup` does nothing slow (stamp files track what is done).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
SYNCED := $(VENV)/.synced
JARS_DIR := .spark-jars
JARS := $(JARS_DIR)/.fetched
# infra check tools (checkov, HCL parser) live apart: their pins conflict with Airflow's
TOOLS := .venv-tools
TOOLS_SYNCED := $(TOOLS)/.synced
export DRIFTLOOP_DATA_DIR ?= $(CURDIR)/.data

.PHONY: help setup services demo up test lint format bench lock clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(SYNCED) $(JARS) $(TOOLS_SYNCED) services ## virtualenvs from the lock files, Spark jars, test servers

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(SYNCED): requirements.lock pyproject.toml | $(BIN)/python
	@echo "==> installing locked Python dependencies into $(VENV) (first run: a few minutes)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

$(TOOLS_SYNCED): terraform/requirements-tools.lock | $(BIN)/python
	@echo "==> installing infra check tools (checkov, HCL parser) into $(TOOLS)"
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(TOOLS)/bin/uv pip sync --python $(TOOLS)/bin/python terraform/requirements-tools.lock
	@touch $@

services: ## install the servers integration tests start: PostgreSQL binaries, versitygw (S3) in .tools/bin, HAProxy in .tools/haproxy, headless Chromium in .tools/chromium; the docker client + compose plugin (compose file checks) in .tools/docker
	@bash include/ops/install-postgres.sh
	@bash include/ops/install-object-store.sh
	@bash include/ops/install-haproxy.sh
	@bash include/ops/install-chromium.sh
	@bash include/ops/install-docker-cli.sh

$(JARS): include/spark-jars/pom.xml
	@command -v mvn >/dev/null || { echo "need Maven (mvn) to fetch the Delta/hadoop-aws jars"; exit 1; }
	@echo "==> fetching Spark jars (Delta Lake, hadoop-aws + AWS SDK, ~720 MB once) into $(JARS_DIR)/"
	rm -rf $(JARS_DIR)
	mvn -B -q --no-transfer-progress -f include/spark-jars/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=$(CURDIR)/$(JARS_DIR)
	@touch $@

demo: setup ## run the main job on the embedded defaults, printing what happened
	$(BIN)/driftloop demo

up: setup ## run Airflow (UI + REST API on 127.0.0.1:8080) until Ctrl-C, printing URLs and credentials
	$(BIN)/driftloop up

test: setup ## run the whole test suite
	$(BIN)/python -m pytest

lint: setup ## ruff (including its Airflow rules) over the whole repo
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## benchmarks: results as JSON under tests/bench/results/
	$(BIN)/python -m tests.bench

lock: ## re-resolve requirements.lock from pyproject.toml (then commit it)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean: ## remove generated data (keeps the virtualenv and jars)
	rm -rf .data
