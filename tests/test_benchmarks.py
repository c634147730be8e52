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


def test_attention_benchmark_compares_both_kernels_and_names_a_bad_call():
    script = str(ROOT / "benchmarks" / "attention.py")
    done = subprocess.run([sys.executable, script, "--calls", "20x20", "8x30", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[:2] for row in rows if row[0] == "8x30"] == [["8x30", "sdpa"], ["8x30", "matmuls"], ["8x30", "speedup"]]
    errors = [float(e) for row in rows if row[:2] == ["8x30", "matmuls"] for e in row[4::2]]
    assert len(errors) == 4 and max(errors) < 0.01
    done = subprocess.run([sys.executable, script, "--calls", "30x8"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--calls 30x8: expected QUERIESxKEYS" in done.stderr
    assert "Traceback" not in done.stderr
