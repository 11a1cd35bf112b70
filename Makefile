# The two commands of the quickstart: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
PROFILE ?= local

.PHONY: setup run test lint bench clean

$(BIN)/sdce: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints pin torch to the CPU wheel here; GPU users drop -c or use containers/
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(BIN)/sdce

run: setup
	$(BIN)/snakemake --profile profiles/$(PROFILE) --cores $(CORES)

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf results .snakemake
