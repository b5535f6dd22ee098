# visplay: `make evolve` runs the main job on the embedded default, `make test` runs the tests.
# Both set up .venv first (Python 3.11, torch 2.14.1 CPU-capable wheels from the local index).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup evolve test test-all model bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

evolve: setup
	$(BIN)/visplay evolve

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

model: setup
	$(BIN)/visplay pretrain --out models/tiny

bench: setup
	$(BIN)/python benchmarks/bench_sampling.py

clean-venv:
	rm -rf $(VENV)
