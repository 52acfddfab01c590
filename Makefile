# The two commands of the README. Each installs what it needs (torch 2.13.0 CPU only when torch is missing).
PY ?= python3
export PYTHON := $(PY)

.PHONY: demo test install install-test bench

demo: install          ## set up, then the main job: synthetic data -> preprocessing -> LOSO train/eval
	bash scripts/demo.sh

test: install-test     ## set up, then the full test suite (CPU, Triton interpreter, nvcc compile check)
	bash scripts/test.sh

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh --test

bench: install         ## the agent-attention benchmark suite (quick version)
	$(PY) benchmarks/run.py --quick
