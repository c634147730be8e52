"""`python -m prefopt.cli` (as `accelerate launch -m prefopt.cli` and `torchrun -m prefopt.cli` run it)."""

from prefopt.cli import app

if __name__ == "__main__":
    app()
