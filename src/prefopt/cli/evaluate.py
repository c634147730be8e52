"""`prefopt eval`: did the model get better? On prompts (answers scored by an oracle, win rates
against a baseline) or on preference data (ranking diagnostics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prefopt.cli.common import console, load_settings, run_library, write_report


def eval_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="YAML settings (docs/settings.md); or all as --key=value.")
    ] = None,
) -> None:
    """Evaluate a model: prefopt eval --model=M --prompts=FILE --oracle=NAME [--baseline=B], or --data=FILE."""
    from prefopt.evaluate.run import EvalConfig

    settings = load_settings(EvalConfig, config, ctx.args)
    run_library(lambda: _evaluate(settings))


def _evaluate(settings) -> None:
    from prefopt.evaluate.run import evaluate

    result = evaluate(settings, console=console())
    table = Table(title=f"prefopt eval: {result['model']} ({result['mode']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        for name, text in _cells(key, value):
            table.add_row(name, text)
    console().print(table)
    console().print(f"results in {settings.out}", highlight=False)
    write_report(settings.out)


def _interval(estimate: dict) -> str:
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def _cells(key: str, value) -> list[tuple[str, str]]:
    """The table rows of one result: intervals, win rates with their counts, plain numbers."""
    if isinstance(value, dict) and "value" in value:
        return [(key, _interval(value))]
    if isinstance(value, dict) and "rate" in value:
        counts = f"{value['wins']} wins, {value['ties']} ties, {value['losses']} losses, {value['failures']} failures"
        rows = [(key, f"{_interval(value['rate'])}  ({counts})")]
        if value.get("length_controlled") is not None:
            lengths = f"mean lengths {value['mean_length_a']:.0f} / {value['mean_length_b']:.0f}"
            rows.append(
                ("length-controlled win rate", f"{value['length_controlled']:.3f}  ({lengths})")
            )
        return rows
    if isinstance(value, float):
        return [(key, f"{value:.3f}")]
    if isinstance(value, int | str) and key not in ("mode", "model"):
        return [(key, str(value))]
    return []
