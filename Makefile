# Two commands do everything on a fresh machine with python3, pip and g++:
#   make demo   - create .venv, install torch (pinned) and the package, run a short dense-vs-sparse training run
#   make test   - same set-up, then the test suite
# torch is installed first and pinned (override: make test TORCH_SPEC="torch==2.5.1"), so pip never pulls a
# multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,mujoco,atari,analysis,sweep,onnx,minatar,contrib
PYTEST_ARGS ?=
DEMO_ARGS ?=
DEMO_DIR ?= logs/demo
DEMO_STEPS ?= 5000
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparse_rl-installed

.PHONY: install demo test bench lint

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m sparse_rl.nn.backends --build
	touch $(STAMP)

install: $(STAMP)

# The main job: SAC on Pendulum-v1, dense vs 90 % sparse RigL, same seed and hyperparameters, then the report.
# The full CLI: $(PY) -m sparse_rl.train --algo sac --env HalfCheetah-v4 --sparsity 0.9
demo: $(STAMP)
	$(PY) -m sparse_rl.train --algo sac --env Pendulum-v1 --sparsity 0 -n $(DEMO_STEPS) --eval-freq 1000 -f $(DEMO_DIR) -tb $(DEMO_DIR)/tb $(DEMO_ARGS)
	$(PY) -m sparse_rl.train --algo sac --env Pendulum-v1 --sparsity 0.9 --method rigl -n $(DEMO_STEPS) --eval-freq 1000 -f $(DEMO_DIR) -tb $(DEMO_DIR)/tb $(DEMO_ARGS)
	$(PY) -m sparse_rl.compare $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) scripts/bench_kernels.py --quick

# ruff everywhere; mypy (strict, see [tool.mypy] in pyproject.toml) on the PyTorch-only layers, its cache in the venv
lint: $(STAMP)
	$(PY) -m ruff check sparse_rl tests scripts
	$(PY) -m mypy --cache-dir $(VENV)/.mypy_cache sparse_rl/nn sparse_rl/topology
