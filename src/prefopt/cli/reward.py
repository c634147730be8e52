"""`prefopt reward train`: settings from YAML and --key=value, then a reward model's training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import (
    console,
    load_settings,
    main_process,
    run_library,
    settings_command,
    write_report,
)

reward_app = typer.Typer(
    help="Reward models: prefopt reward train CONFIG.yaml.", no_args_is_help=True
)


@reward_app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    cls=settings_command("prefopt.reward.config:RewardConfig"),
)
def reward_train_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="YAML config (settings: docs/settings.md).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")
    ] = False,
) -> None:
    """Train a reward model on pairs or ranked lists: prefopt reward train CONFIG.yaml [--key=value ...]."""
    from prefopt.reward.config import RewardConfig

    settings = load_settings(RewardConfig, config, ctx.args)
    run_library(lambda: _reward_train(settings, resume))


def _reward_train(settings, resume: bool) -> None:
    from prefopt.reward import reward_train

    out = console()
    result = reward_train(settings, resume=resume, console=out)
    if not main_process():  # the other processes of a run of several say nothing
        return
    start, end = result.eval_start, result.eval_end
    for key in ("reward_accuracy", "kendall_tau", "ndcg", "calibration_ece"):
        if isinstance(start.get(key), float) and isinstance(end.get(key), float):
            out.print(f"eval {key}: {start[key]:.4f} -> {end[key]:.4f}", highlight=False)
    out.print(
        f"{result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"the reward model is in {result.output_dir / 'model'} (the reward_model oracle loads it)",
        highlight=False,
    )
    write_report(result.output_dir)
