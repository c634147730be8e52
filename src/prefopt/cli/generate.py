"""`prefopt generate`: K completions per prompt, written as they finish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, load_settings, run_library


def generate_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="YAML settings (docs/settings.md); or all as --key=value.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run's output file.")
    ] = False,
) -> None:
    """Sample K completions for every prompt: prefopt generate --prompts FILE --k 4 --out FILE."""
    from prefopt.generate import GenerateConfig

    settings = load_settings(GenerateConfig, config, ctx.args)
    run_library(lambda: _generate(settings, resume))


def _generate(settings, resume: bool) -> None:
    from prefopt.generate import generate

    result = generate(settings, resume=resume, console=console())
    console().print(
        f"{result.generated} prompts × {settings.k} completions ({result.tokens} tokens, "
        f"{result.tokens_per_second:.0f} tokens/s) written to {result.out}"
        + (f"; {result.already_done} were already there" if result.already_done else ""),
        highlight=False,
    )
