"""The `prefopt` command line. Each command parses its arguments, loads its config and calls one
library function; heavy imports happen inside the commands that need them."""

from __future__ import annotations

import inspect

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
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
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
def losses_command(name: str = typer.Argument(None, help="Show one loss in full.")) -> None:
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


if __name__ == "__main__":
    app()
