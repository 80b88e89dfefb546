# Sandmesh: `make up` starts the mesh locally, `make test` runs the whole suite.
# Both set the machine up first: Debian packages, a virtualenv, and the servers they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN := gen/python

# Debian packages: the sandbox and the toolchains it runs, Chromium for the browser pool,
# and initdb/pg_ctl for throwaway Postgres clusters. npm (for the Node.js client test) is
# checked as a command: some Node.js builds bring their own.
APT_PACKAGES := bubblewrap python3 nodejs gcc g++ golang-go default-jdk-headless php-cli ruby \
	chromium postgresql redis-server

.PHONY: up test bench setup system proto proto-check lint pytest clean

up: setup
	$(BIN)/python -m sandmesh_devstack up

# Each benchmark against its baseline, side by side in one run; JSON lands in bench/results/.
bench: setup
	$(BIN)/python -m bench

test: setup lint proto-check pytest

setup: system $(VENV)/.installed

system:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The one way Python stubs are made; CI fails when the committed ones differ.
proto: setup
	rm -rf $(GEN)/sandmesh
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN) --mypy_out=$(GEN) --grpc_python_out=$(GEN) --mypy_grpc_out=$(GEN) \
	  $(PROTOS) 2>&1 | grep -v '^Writing mypy' || true

# `buf breaking` (FILE rules, see buf.yaml) compares protos/ with main's: the local branch, or
# origin's in a clone that checked out another branch. Both work in a worktree and where .git is
# a file. Without a git history holding main (an exported source tree, a single-branch clone of
# another branch) it says so and skips.
proto-check: setup
	$(BIN)/buf lint
	@base=$$([ -e .git ] && { git rev-parse -q --verify 'refs/heads/main^{commit}' \
	  || git rev-parse -q --verify 'refs/remotes/origin/main^{commit}'; } 2>/dev/null); \
	if [ -z "$$base" ]; then \
	  echo "buf breaking SKIPPED: no main branch here to compare with (run git fetch origin main)"; \
	else \
	  echo "buf breaking against main ($$base)"; \
	  $(BIN)/buf breaking --against ".git#ref=$$base"; \
	fi
	@tmp=$$(mktemp -d); \
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$$tmp --mypy_out=$$tmp --grpc_python_out=$$tmp --mypy_grpc_out=$$tmp \
	  $(PROTOS) 2>&1 | grep -v '^Writing mypy'; \
	if ! diff -r $$tmp/sandmesh $(GEN)/sandmesh >/dev/null; then \
	  diff -r $$tmp/sandmesh $(GEN)/sandmesh | head -20; rm -rf $$tmp; \
	  echo "generated code is stale: run 'make proto' and commit the result"; exit 1; \
	fi; rm -rf $$tmp; echo "generated code is current"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
