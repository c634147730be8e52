"""A command run as one of several processes leaves its process group when it ends, as PyTorch
asks, and the processes other than the main one end without the interpreter's teardown (which
aborted a finished process now and then: SIGABRT, "terminate called without an active
exception")."""

import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from typer.testing import CliRunner

from prefopt.cli import app


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("arguments, code", [(["losses", "dpo"], 0), (["losses", "dpoo"], 2)])
def test_a_command_leaves_its_process_group(process_group, arguments, code):
    assert dist.is_initialized()
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == code, result.output
    assert not dist.is_initialized()


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("arguments, code", [(["losses", "dpo"], 0), (["losses", "dpoo"], 2)])
def test_every_process_of_a_run_ends_with_its_commands_code_and_output(rank, arguments, code):
    """`python -m prefopt.cli` as torchrun starts it: the processes other than the main one skip
    the interpreter's teardown, and still exit with the command's code, their output written."""
    result = subprocess.run([sys.executable, "-m", "prefopt.cli", *arguments],
                            capture_output=True, text=True, timeout=120,
                            env=os.environ | {"RANK": rank})  # fmt: skip
    assert result.returncode == code, result.stderr
    assert ("2305.18290" in result.stdout) if code == 0 else ("dpoo" in result.stderr)
