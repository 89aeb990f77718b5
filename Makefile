# Two commands a new user needs: `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= normal
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit venv bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tapas demo --scenario $(SCENARIO)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy contracts controller simulator forecasting streams ingest dashboard tapas bench foundation router

test: lint typecheck
	$(BIN)/python -m pytest -m "not fuzz and not slow" $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

bench: $(STAMP)
	$(BIN)/tapas bench --json artifacts/bench.json

clean:
	rm -rf $(VENV) var artifacts
