# stylepair: `make demo` runs the whole pipeline on the embedded phantom data, `make test` runs the tests.
# Both create the virtual environment on first use (Python 3.11, CPU build of torch).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU users install their CUDA torch into $(VENV) first and it is kept.
# Where PyPI would serve a CUDA build, add e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch>=2.8,<2.14
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.stylepair-installed

.PHONY: demo test test-slow bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m segmentation.demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all
