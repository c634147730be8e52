"""`prefopt demo`: the loop on the embedded model and the built-in task, then a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, run_library


def demo_command(
    out: Annotated[
        Path, typer.Option("--out", help="Where the task, the loops and the report go.")
    ] = Path("runs/demo"),
    model: Annotated[str, typer.Option("--model", help="The initial policy.")] = "default",
    compare_random: Annotated[
        bool,
        typer.Option(
            "--compare-random",
            help="Add a random-acquisition loop with the same budget, on the same axes.",
        ),
    ] = False,
    people: Annotated[
        bool,
        typer.Option(
            "--people",
            help="Be the oracle: the label app serves the loop's store "
            "and you rank the chosen lists in the browser.",
        ),
    ] = False,
    port: Annotated[
        int, typer.Option("--port", help="With --people: the label app's port.")
    ] = 8000,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="loop (the default): rounds of sampling, choosing what to label, labelling and "
            "training; rl: GRPO steps with the live policy. Both spend 1,152 sampled answers "
            "(docs/demo.md).",
        ),
    ] = None,
) -> None:
    """Show what prefopt is for, in a few minutes on two CPU cores: the model's own samples, a verifier,
    training, and the improvement on prompts it never saw. Run it again to resume."""
    from prefopt.demo import demo

    run_library(
        lambda: demo(
            out,
            model=model,
            compare_random=compare_random,
            people=people,
            port=port,
            console=console(),
            method=method,
        )
    )
