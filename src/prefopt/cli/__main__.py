"""`python -m prefopt.cli` (as `accelerate launch -m prefopt.cli` and `torchrun -m prefopt.cli` run it)."""

import os
import sys

from prefopt.cli import app
from prefopt.cli.common import main_process

if __name__ == "__main__":
    try:
        app()
    except SystemExit as end:
        if main_process():
            raise
        # The other processes of a run end here, their work saved and their process group left:
        # the interpreter's teardown of PyTorch's distributed threads can abort a finished process
        # ("terminate called without an active exception", SIGABRT), failing the whole launch.
        code = end.code if isinstance(end.code, int) else int(end.code is not None)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
