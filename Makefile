# visplay: `make evolve` runs the main job on the embedded default, `make test` runs the tests.
# Both set up .venv first (Python 3.11, torch 2.14.1 CPU-capable wheels from the local index);
# `make test-lower` runs the suite at the lower end of the supported range, in .venv-low.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup setup-lower evolve test test-lower test-all model bench bench-gpu eval-demo kill-sweep clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/lock.txt torch torchvision
	$(BIN)/pip install -q -c requirements/lock.txt -e ".[test]"   # the exact tested set
	touch $(STAMP)

# The lower end of the supported range (requirements/lower.txt: torch 2.14.0 + transformers 5.20.2,
# what the [vllm] extra resolves to) in its own venv; torch 2.14.0 comes from PyPI (a CUDA wheel).
LOW_VENV ?= .venv-low
setup-lower: $(LOW_VENV)/.installed

$(LOW_VENV)/.installed: pyproject.toml requirements/lower.txt
	$(PYTHON) -m venv $(LOW_VENV)
	$(LOW_VENV)/bin/pip install -q --upgrade pip
	$(LOW_VENV)/bin/pip install -q -c requirements/lower.txt torch torchvision
	$(LOW_VENV)/bin/pip install -q -c requirements/lower.txt -e ".[test]"
	touch $@

evolve: setup
	$(BIN)/visplay evolve

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

# the same suite at the lower end of the range (CI runs both)
test-lower: setup-lower
	$(LOW_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

test-all: setup
	$(BIN)/python -m pytest -q

# the benchmark table on fixture benchmarks made from world scenes (docs/evaluation.md)
eval-demo: setup
	$(BIN)/python scripts/make_benchmark_fixtures.py runs/bench-fixtures --force
	$(BIN)/visplay eval --model tiny --benchmarks mmmu,mm-vet,realworldqa,visnumbench,mathverse,mathvision,hallusionbench,world \
		--data-dir runs/bench-fixtures --out runs/bench-fixtures/eval --min-pixels 19600 --max-pixels 19600 --n 50

model: setup
	$(BIN)/visplay pretrain --out models/tiny

bench: setup
	$(BIN)/python benchmarks/bench_sampling.py

# The GPU check (docs/scaling.md section 12): one questioner + one reasoner GRPO step on a random-init
# Qwen2.5-VL-3B, vLLM colocate rollouts, in its own venv with the [vllm] extra (CUDA wheels from PyPI);
# no GPU is one line before anything is installed. JSON: bench-3b.json.
GPU_VENV ?= .venv-gpu
bench-gpu:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make bench-gpu: no NVIDIA GPU here (nvidia-smi -L finds none); run it on a GPU machine (docs/scaling.md section 12)" >&2; exit 1; }
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --upgrade pip
	$(GPU_VENV)/bin/pip install -q -e ".[vllm]" || $(GPU_VENV)/bin/pip install -q -e .   # plain generate without vllm
	$(GPU_VENV)/bin/python benchmarks/bench_gpu_step.py --preset qwen2_5_vl_3b --per-device-batch 8 --out bench-3b.json

# kill `visplay evolve` at 34 points, resume after each, compare with an uncrashed run (docs/reliability.md)
kill-sweep: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/kill_sweep.py --out runs/kill-sweep --minutes 20

clean-venv:
	rm -rf $(VENV) $(LOW_VENV)
