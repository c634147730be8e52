"""Shared fixtures: the real `prefopt` entry point of the environment running the tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# `make test` runs one pytest worker per core: each worker's torch, and every process it starts,
# takes its share of the cores instead of all of them (OpenMP threads that outnumber the cores
# spin while they wait for each other)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))


@pytest.fixture(scope="session")
def prefopt_cli():
    """Run the installed console script; returns a function giving CompletedProcess."""
    script = Path(sys.executable).parent / "prefopt"
    assert script.exists(), f"console script missing: {script} (install with `pip install -e .`)"

    def run(*args, cwd=None, timeout=600, env=None):
        return subprocess.run(
            [str(script), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Folder of a tiny random Llama + tokenizer (built once per test session)."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's prefopt cache."""
    folder = tmp_path_factory.mktemp("prefopt-cache")
    monkeypatch.setenv("PREFOPT_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    """The tiny model's tokenizer, as prefopt loads it."""
    from prefopt.engine.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="module")
def model(tiny_model):
    """The tiny model as prefopt loads it, in eval mode."""
    from prefopt.engine.model import load_model

    return load_model(str(tiny_model)).eval()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the session (skipped, with the reason, where none is installed)."""
    from label_helpers import INITDB, NO_POSTGRES, postgres_server

    if not INITDB:
        pytest.skip(NO_POSTGRES)
    with postgres_server() as url:
        yield url
