"""The benchmark scripts refuse bad input with a message, not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", ["missing.gguf", "missing-folder"])
def test_vs_trl_names_a_missing_model(tmp_path, model):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--quick", "--model",
                           str(tmp_path / model)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"--model {tmp_path / model}:" in done.stderr and "Traceback" not in done.stderr, done.stderr
