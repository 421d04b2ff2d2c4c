# Two commands do all the set-up: `make test` and `make demo`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: help venv lint format typecheck test demo bench images clean

help:
	@echo "make test    - lint, type-check and run every test (creates .venv)"
	@echo "make demo    - run the whole pipeline locally on an embedded S3 (creates .venv)"
	@echo "make bench   - performance benchmark"
	@echo "make format  - apply ruff's formatting and safe fixes"
	@echo "make clean   - remove .venv and local output"

$(STAMP): requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; run: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The two handlers share a module name (lambda_function), so mypy checks each on its own.
typecheck: venv
	$(BIN)/mypy lambda/generator/lambda_function.py
	$(BIN)/mypy lambda/transformer/lambda_function.py
	$(BIN)/mypy tests

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint typecheck
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/python -m local.demo $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) local/out .pytest_cache .mypy_cache .ruff_cache
