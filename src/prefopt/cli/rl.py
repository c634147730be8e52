"""`prefopt rl`: step-wise group-relative RL from verifiers, reward models and judges."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, load_settings, main_process, run_library, write_report


def rl_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="YAML settings (docs/settings.md).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")
    ] = False,
) -> None:
    """Group RL (GRPO, RLOO, REINFORCE++, DisCO): prefopt rl CONFIG.yaml [--key=value ...] [--resume]."""
    from prefopt.rl import RLConfig

    settings = load_settings(RLConfig, config, ctx.args)
    run_library(lambda: _rl(settings, resume))


def _rl(settings, resume: bool) -> None:
    from prefopt.rl import rl

    result = rl(settings, resume=resume, console=console())
    if not main_process():  # the other processes of a run of several say nothing
        return
    last = result.last
    console().print(
        f"{result.steps} steps in {result.seconds:.0f} s; last step: mean reward "
        f"{last.get('reward', float('nan')):.3f}, {last.get('frac_reward_zero_std', 0):.0%} of its "
        f"groups without signal; output in {result.output_dir}",
        highlight=False,
    )
    write_report(result.output_dir)
