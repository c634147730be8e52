"""`prefopt tune`: an Optuna study over the settings of `prefopt train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, load_settings, run_library, write_report


def tune_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="The study file (settings: docs/settings.md).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the study in its storage.")
    ] = False,
    n_trials: Annotated[
        int | None,
        typer.Option(
            "--n-trials", min=1, help="The study's trial budget (over every process sharing it)."
        ),
    ] = None,
) -> None:
    """Search settings of prefopt train with Optuna: prefopt tune STUDY.yaml [--resume] [--n-trials N]."""
    from prefopt.tune import TuneConfig

    settings = load_settings(TuneConfig, config, ctx.args)
    run_library(lambda: _tune(settings, resume, n_trials))


def _tune(settings, resume: bool, n_trials: int | None) -> None:
    from prefopt.tune import tune

    result = tune(settings, resume=resume, n_trials=n_trials, console=console())
    write_report(result.folder)
