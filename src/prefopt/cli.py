"""The `prefopt` command line. Each command parses its arguments, loads its config and calls one
library function; heavy imports happen inside the commands that need them."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="prefopt: align language models from comparisons and rankings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console() -> Console:
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(width=200, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@app.callback()
def main() -> None:
    """prefopt: align language models from comparisons and rankings."""


def _needs(info) -> str:
    words = {"ref": "reference", "lengths": "lengths", "tokens": "token log-probs"}
    return ", ".join(words[n] for n in info.needs) or "policy log-probs"


def _defaults(name: str) -> str:
    from prefopt.losses import loss_defaults

    return ", ".join(f"{key}={value}" for key, value in loss_defaults(name).items()) or "-"


@app.command("losses")
def losses_command(name: Annotated[str | None, typer.Argument(help="Show one loss in full.")] = None) -> None:
    """List every registered objective with its formula, paper, inputs and defaults."""
    from prefopt.losses import LOSSES

    console = _console()
    if name is None:
        table = Table(title=f"prefopt objectives ({len(LOSSES)})", show_lines=False)
        for column in ("name", "family", "formula", "needs", "defaults", "paper"):
            table.add_column(column, overflow="fold")
        for loss_name, fn in LOSSES.items():
            info = fn.info
            label = f"{loss_name} (experimental)" if info.experimental else loss_name
            cells = (label, info.family, info.formula, _needs(info), _defaults(loss_name), info.paper)
            table.add_row(*map(escape, cells))
        console.print(table)
        console.print("`prefopt losses NAME` shows one in full.", highlight=False)
        return
    if name not in LOSSES:
        _fail(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    fn = LOSSES[name]
    info = fn.info
    console.print(f"[bold]{name}[/]" + (" [yellow](experimental)[/]" if info.experimental else ""))
    for label, value in (("family", info.family), ("formula", info.formula), ("paper", info.paper),
                         ("needs", _needs(info)), ("defaults", _defaults(name))):
        console.print(f"  {label:9}{value}", highlight=False, markup=False)
    console.print()
    console.print(inspect.getdoc(fn), highlight=False, markup=False)


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="YAML config (settings table in the README).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="With LoRA, also save a merged full model.")] = False,
) -> None:
    """Train a model on pairs or ranked lists: prefopt train CONFIG.yaml [--key=value ...]."""
    from prefopt.config import ConfigError, TrainConfig, load_config

    overrides = list(ctx.args) + (["--merge=true"] if merge else [])
    try:
        settings = load_config(TrainConfig, config, overrides)
    except ConfigError as error:
        _fail(str(error))
    _run_library(lambda: _train(settings, resume))


def _train(settings, resume: bool) -> None:
    from prefopt.train import HEADLINE_METRICS, headline, train

    console = _console()
    result = train(settings, resume=resume, console=console)
    start, end = result.eval_start, result.eval_end
    for key in HEADLINE_METRICS:
        before, after = headline(start, key), headline(end, key)
        if before is not None and after is not None:
            console.print(f"eval {key}: {before:.4f} -> {after:.4f}", highlight=False)
    console.print(f"{result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
                     f"output in {result.output_dir}", highlight=False)


def _run_library(job) -> None:
    """Run a library call; expected failures become one clear line and a non-zero exit, not a
    traceback (set PREFOPT_DEBUG=1 to see the traceback)."""
    from prefopt.data import DataError
    from prefopt.train import TrainingError

    try:
        job()
    except KeyboardInterrupt:
        _fail("interrupted; run the same command with --resume to continue from the last checkpoint", 130)
    except (DataError, TrainingError, FileNotFoundError, ValueError) as error:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        _fail(str(error), 1)


if __name__ == "__main__":
    app()
