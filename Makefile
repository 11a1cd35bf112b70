# The two commands of the quickstart: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
PROFILE ?= local

.PHONY: setup run test lint rulegraph readme-table bench gpu-check xla-env clean

# `make run` installs what the study needs (the package and Snakemake); `make test` adds the
# development extras: linters, lm-eval for the cross-checks, the cloud plugins and the GCS
# emulator, TensorBoard. Constraints pin torch to the CPU wheel here; GPU users drop -c or use
# containers/.
$(VENV)/.run: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[workflow]"
	touch $@

$(VENV)/.test: $(VENV)/.run
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,cloud,checks,trackers]"
	@# the browser test of sdce serve drives Debian's chromium; best effort, it skips without it
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null) || echo "chromium not installed: tests/test_serve.py's browser test will skip"; fi
	touch $@

setup: $(VENV)/.test

# rules call the `sdce` command line: the environment's bin goes first on PATH
run: $(VENV)/.run
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --profile profiles/$(PROFILE) --cores $(CORES)

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

# the DAG's picture in docs/ (a Mermaid flowchart of Snakemake's rule graph)
rulegraph: $(VENV)/.run
	PATH="$(abspath $(BIN)):$$PATH" bash docs/rulegraph.sh > docs/rulegraph.md

# the README's "what the default study found" table: the report's headline.md (after make run)
readme-table: $(VENV)/.run
	$(BIN)/python -c "from sdce.report import insert_headline; insert_headline('results/default/report', 'README.md')"

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_ddp.py

# On a machine with a CUDA GPU (GPU_PYTHON: one whose torch sees it): the CUDA paths' tests, then
# the accelerator benchmark (docs/scale.md). Without a GPU the tests skip and the benchmark
# runs on the CPU.
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	PYTHONPATH=src:tests $(GPU_PYTHON) -m pytest -q -m gpu tests/test_gpu.py
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/bench_gpu.py --steps 20

# Optional torch-xla environment for the XLA CPU tests (tests/test_xla.py skips without it).
# torch-xla 2.9.0 needs torch 2.9.0; PyPI's torch 2.9.0 for Linux x86_64 is the CUDA build,
# which imports only with its nvidia-* wheels: about 3.8 GB to download, 7 GB installed.
XLA_VENV ?= .venv-xla
xla-env: $(XLA_VENV)/bin/sdce

$(XLA_VENV)/bin/sdce: pyproject.toml
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(XLA_VENV)/bin/python -m pip install --quiet torch==2.9.0 torch-xla==2.9.0
	$(XLA_VENV)/bin/python -m pip install --quiet -e . pytest torch==2.9.0
	touch $@

clean:
	rm -rf results .snakemake
