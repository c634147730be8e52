"""`prefopt train`: settings from YAML and --key=value, then the training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, load_settings, main_process, run_library, write_report


def train_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="YAML config (settings: docs/settings.md).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="With LoRA, also save a merged full model.")
    ] = False,
) -> None:
    """Train a model on pairs or ranked lists: prefopt train CONFIG.yaml [--key=value ...]."""
    from prefopt.train.config import TrainConfig

    overrides = list(ctx.args) + (["--merge=true"] if merge else [])
    settings = load_settings(TrainConfig, config, overrides)
    run_library(lambda: _train(settings, resume))


def _train(settings, resume: bool) -> None:
    from prefopt.train import HEADLINE_METRICS, headline, train

    out = console()
    result = train(settings, resume=resume, console=out)
    if not main_process():  # the other processes of a run of several say nothing
        return
    start, end = result.eval_start, result.eval_end
    for key in HEADLINE_METRICS:
        before, after = headline(start, key), headline(end, key)
        if before is not None and after is not None:
            out.print(f"eval {key}: {before:.4f} -> {after:.4f}", highlight=False)
    out.print(
        f"{result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"output in {result.output_dir}",
        highlight=False,
    )
    write_report(result.output_dir)
