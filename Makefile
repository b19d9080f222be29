# Kami: `make run` starts it, `make test` checks everything. `make help` lists the rest.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
STAMP  := $(VENV)/.deps-installed
RUST_SOURCES := $(shell find core_rs/src -name '*.rs' 2>/dev/null) Cargo.toml Cargo.lock core_rs/Cargo.toml
EXT    := engine/_core.abi3.so

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt build rust-check rust-test py-lint typecheck stubtest pytest \
        test-unit test-integration test-e2e bench bench-quick lock clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Exact versions from the lock file, so every machine builds the same thing.
$(STAMP): $(BIN)/python $(LOCK) pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q --upgrade "pip>=25"
	$(BIN)/pip install --disable-pip-version-check -q -r $(LOCK)
	touch $@

# The extension in release mode (fat LTO), installed editable with the `kami` script.
$(EXT): $(STAMP) $(RUST_SOURCES)
	$(BIN)/maturin develop --release --locked -q
	touch $@

build: $(EXT) ## Install dependencies and build the Rust extension (release)

run: build ## Start Kami on http://127.0.0.1:8000 (embedded PostgreSQL + Valkey under ./var)
	$(BIN)/kami serve

test: lint build typecheck stubtest rust-test pytest ## Every check: Rust, lint, types, stubs, all tests

lint: $(STAMP) ## cargo fmt --check, clippy -D warnings, ruff check, ruff format --check
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --all-targets --no-default-features -- -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP) ## Format Rust and Python in place
	cargo fmt --all
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

rust-test: ## cargo test (pure Rust modules, no libpython needed)
	cargo test --locked --no-default-features

typecheck: build ## mypy, strict on engine/ and api/
	$(BIN)/mypy

stubtest: build ## Check engine/_core.pyi against the built extension
	$(BIN)/python -m mypy.stubtest engine._core

pytest: build ## All pytest suites (unit, integration, e2e)
	$(BIN)/pytest tests

test-unit: build ## Unit tests only (no servers)
	$(BIN)/pytest tests/unit

test-integration: build ## Integration tests (real PostgreSQL and Redis)
	$(BIN)/pytest tests/integration

test-e2e: build ## End-to-end tests (real server processes)
	$(BIN)/pytest tests/e2e

bench: build ## Full bench suite (< 20 min): scenarios, baselines, goals -> bench/results/
	$(BIN)/python -m bench

bench-quick: build ## Scaled-down bench suite (< 2 min); fills every field of latest.json
	$(BIN)/python -m bench --quick

lock: $(BIN)/python ## Re-resolve requirements/lock.txt from pyproject.toml's ranges
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip freeze --exclude-editable | grep -v '^kami' > $(LOCK)

clean: ## Remove build products (keeps ./var, your data)
	rm -rf target $(VENV) $(EXT) .mypy_cache .ruff_cache .pytest_cache
