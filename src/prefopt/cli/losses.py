"""`prefopt losses`: the registered objectives, from the registry."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from prefopt.cli.common import console, fail


def _defaults(name: str) -> str:
    from prefopt.losses import loss_defaults

    return ", ".join(f"{key}={value}" for key, value in loss_defaults(name).items()) or "-"


def losses_command(
    name: Annotated[str | None, typer.Argument(help="Show one loss in full.")] = None,
) -> None:
    """List every registered objective with its formula, paper, inputs and defaults."""
    from prefopt.losses import LOSSES

    out = console()
    if name is None:
        table = Table(title=f"prefopt objectives ({len(LOSSES)})", show_lines=False)
        for column in ("name", "family", "formula", "needs", "defaults", "paper"):
            table.add_column(column, overflow="fold")
        for loss_name, fn in LOSSES.items():
            info = fn.info
            label = f"{loss_name} (experimental)" if info.experimental else loss_name
            cells = (
                label,
                info.family,
                info.formula,
                info.describe_needs(),
                _defaults(loss_name),
                info.paper,
            )
            table.add_row(*map(escape, cells))
        out.print(table)
        out.print("`prefopt losses NAME` shows one in full.", highlight=False)
        return
    if name not in LOSSES:
        try:
            LOSSES.get(name)
        except KeyError as error:
            fail(str(error))
    fn = LOSSES[name]
    info = fn.info
    out.print(f"[bold]{name}[/]" + (" [yellow](experimental)[/]" if info.experimental else ""))
    for label, value in (
        ("family", info.family),
        ("formula", info.formula),
        ("paper", info.paper),
        ("needs", info.describe_needs()),
        ("defaults", _defaults(name)),
    ):
        out.print(f"  {label:9}{value}", highlight=False, markup=False)
    out.print()
    out.print(inspect.getdoc(fn), highlight=False, markup=False)
