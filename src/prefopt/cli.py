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


label_app = typer.Typer(help="The labelling web app: people compare and rank outputs; labels feed training.",
                        no_args_is_help=True)
app.add_typer(label_app, name="label")
DbOption = Annotated[str, typer.Option("--db", help="Database URL (sqlite:///…, postgresql+psycopg://…) or a "
                                                    "SQLite file path.")]


def _store(db: str, **settings):
    from prefopt.label.store import Store

    return Store(db if "://" in db else f"sqlite:///{db}", **settings)


@label_app.command("serve")
def label_serve(
    items: Annotated[Path | None, typer.Option("--items", help="Prompts with K ≥ 2 completions, in any format "
                                                               "`prefopt train` reads (scores not needed).")] = None,
    db: DbOption = "labels.db",
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for a team; put HTTPS in front).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    redundancy: Annotated[int, typer.Option(min=1, help="Labels wanted per item, from different people.")] = 1,
    assignment_minutes: Annotated[float, typer.Option(min=0.1, help="An item handed out is reserved for its "
                                                                     "annotator this long.")] = 30.0,
) -> None:
    """Serve the labelling app: prefopt label serve --items ITEMS --db URL."""

    def serve() -> None:
        import uvicorn

        from prefopt.data import load_records
        from prefopt.label.app import create_app

        store = _store(db, redundancy=redundancy, assignment_minutes=assignment_minutes)
        console = _console()
        if items is not None:
            loaded = load_records(items, require_scores=False)
            added = store.add_items(loaded.records)
            console.print(f"{loaded.summary()}; {added} new items added", highlight=False)
        console.print(f"labelling app at http://{host}:{port}/login (database {store.engine.url!r})",
                      highlight=False)
        uvicorn.run(create_app(store), host=host, port=port, log_level="warning")

    _run_library(serve)


def _add_person(name: str, db: str, role: str) -> None:
    def add() -> None:
        token = _store(db).add_user(name, role)
        console = _console()
        console.print(f"{role} {name!r} added. Their token (shown once, only its hash is stored):", highlight=False)
        console.print(token, highlight=False, markup=False)

    _run_library(add)


@label_app.command("add-annotator")
def label_add_annotator(name: Annotated[str, typer.Argument(help="A unique name.")], db: DbOption = "labels.db"
                        ) -> None:
    """Add an annotator and print their token once."""
    _add_person(name, db, "annotator")


@label_app.command("add-admin")
def label_add_admin(name: Annotated[str, typer.Argument(help="A unique name.")], db: DbOption = "labels.db") -> None:
    """Add an admin (sees counts, agreement and every label) and print their token once."""
    _add_person(name, db, "admin")


@label_app.command("export")
def label_export(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    db: DbOption = "labels.db",
    fmt: Annotated[str, typer.Option("--format", help="lists: every label's full order with ties; pairs: the "
                                                      "majority preference per pair of completions.")] = "lists",
) -> None:
    """Write the labels as training data that `prefopt train` reads as is."""
    from prefopt.label.export import FORMATS

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")

    def export() -> None:
        from prefopt.label.export import export_rows, write_jsonl

        rows, left_out = export_rows(_store(db).labels(), fmt)
        write_jsonl(rows, out)
        skipped = "; ".join(f"{count} {reason} left out" for reason, count in left_out.items())
        _console().print(f"wrote {len(rows)} {fmt} rows to {out}" + (f" ({skipped})" if skipped else ""),
                         highlight=False)

    _run_library(export)


def _run_library(job) -> None:
    """Run a library call; expected failures become one clear line and a non-zero exit, not a
    traceback (set PREFOPT_DEBUG=1 to see the traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from prefopt.data import DataError
    from prefopt.errors import TrainingError
    from prefopt.label.store import LabelError

    try:
        job()
    except KeyboardInterrupt:
        _fail("interrupted; run the same command with --resume to continue from the last checkpoint", 130)
    except (DataError, TrainingError, LabelError, FileNotFoundError, ValueError) as error:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        _fail(str(error), 1)
    except SQLAlchemyError as error:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        _fail(f"database: {str(error.orig if getattr(error, 'orig', None) else error).strip().splitlines()[0]}", 1)


if __name__ == "__main__":
    app()
