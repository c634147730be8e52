"""What every command shares: the console, one clear error line instead of a traceback."""

from __future__ import annotations

import importlib
import os

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand


def console() -> Console:
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(width=200, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False
    )
    raise typer.Exit(code)


def run_library(job) -> None:
    """Run a library call; expected failures become one clear line and a non-zero exit, not a
    traceback (set PREFOPT_DEBUG=1 to see the traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from prefopt.data import DataError
    from prefopt.errors import LabelError, OracleError, TrainingError

    try:
        job()
    except KeyboardInterrupt:
        fail(
            "interrupted; run the same command with --resume to continue from the last checkpoint",
            130,
        )
    except (
        DataError,
        TrainingError,
        OracleError,
        LabelError,
        FileNotFoundError,
        ValueError,
    ) as error:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        fail(str(error), 1)
    except SQLAlchemyError as error:
        if os.environ.get("PREFOPT_DEBUG"):
            raise
        fail(
            f"database: {str(error.orig if getattr(error, 'orig', None) else error).strip().splitlines()[0]}",
            1,
        )


def main_process() -> bool:
    """Whether this is the process that speaks for a run of several (torchrun's and accelerate
    launch's RANK; a run of one is its own main process)."""
    return int(os.environ.get("RANK", "0")) == 0


def write_report(path) -> None:
    """The report of a finished run or eval; a plotting failure is told, never fatal (the results
    are saved already)."""
    from prefopt.report import report

    try:
        console().print(f"report: {report(path)}", highlight=False)
    except Exception as error:
        console().print(
            f"[yellow]could not write the report: {type(error).__name__}: {error}[/]",
            highlight=False,
        )


def load_settings(model, config, args: list[str]):
    """Settings from an optional YAML file and `--key=value` or `--key value` options; a bad
    setting is one line and exit code 2. Without a YAML file the first option lands in `config`."""
    from prefopt.settings import ConfigError, load_config

    args = list(args)
    if config is not None and str(config).startswith("--"):
        args, config = [str(config), *args], None
    try:
        return load_config(model, config, _joined_options(args))
    except ConfigError as error:
        fail(str(error))


def _joined_options(args: list[str]) -> list[str]:
    """`--key value` as `--key=value`, so both spellings work."""
    joined, i = [], 0
    while i < len(args):
        if (
            args[i].startswith("--")
            and "=" not in args[i]
            and i + 1 < len(args)
            and not args[i + 1].startswith("--")
        ):
            joined.append(f"{args[i]}={args[i + 1]}")
            i += 2
        else:
            joined.append(args[i])
            i += 1
    return joined


class SettingsCommand(TyperCommand):
    """A command whose settings (YAML and --key=value) are listed under its --help, with type,
    default and meaning, from the settings model that docs/settings.md is generated from. The model
    is imported only when help is asked for (it pulls in torch)."""

    settings_model = ""  # "module:Class"

    def format_help(self, ctx, formatter) -> None:
        from prefopt.settings import settings_table, type_name

        module, name = self.settings_model.split(":")
        model = getattr(importlib.import_module(module), name)
        rows = [escape(f"{key} ({type_name(model, key)}, default {default}): {meaning}")
                for key, default, meaning in settings_table(model)]  # fmt: skip
        self.epilog = "\n\n".join(["Settings (in the YAML file, or --key=value):", *rows])
        super().format_help(ctx, formatter)


def settings_command(model: str) -> type[SettingsCommand]:
    """The command class of a command whose settings are the model `module:Class`."""
    return type("Settings", (SettingsCommand,), {"settings_model": model})
