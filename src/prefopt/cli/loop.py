"""`prefopt loop`: rounds of generate → acquire → label → train → evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, load_settings, main_process, run_library, write_report


def loop_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="YAML settings (docs/settings.md).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last stage finished.")
    ] = False,
) -> None:
    """Online, active preference learning: prefopt loop CONFIG.yaml [--key=value ...] [--resume]."""
    from prefopt.loop import LoopConfig

    settings = load_settings(LoopConfig, config, ctx.args)
    run_library(lambda: _loop(settings, resume))


def _loop(settings, resume: bool) -> None:
    from prefopt.loop import loop

    records = loop(settings, resume=resume, console=console())
    if not main_process():  # the other processes of a run of several say nothing
        return
    for record in records:
        score = record.get("eval", {}).get("score")
        held_out = (
            f"; held-out score {score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"
            if score
            else ""
        )
        console().print(
            f"round {record['round'] + 1}: {record['labels']} labels ({record['labels_total']} in all)"
            f"{held_out}",
            highlight=False,
        )
    console().print(f"rounds in {Path(settings.output_dir) / 'rounds.jsonl'}", highlight=False)
    write_report(settings.output_dir)
