"""`prefopt report`: an HTML page of plots for a run or an eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, run_library


def report_command(
    path: Annotated[Path, typer.Argument(help="A train run folder, or an eval result (.json).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="The HTML file (default: beside the run).")
    ] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option("--compare", help="Loops to overlay on this one's curves (repeatable)."),
    ] = None,
) -> None:
    """Write one self-contained HTML page with plots: prefopt report PATH."""
    from prefopt.report import report

    run_library(
        lambda: console().print(f"report: {report(path, out, compare or [])}", highlight=False)
    )
