"""`prefopt score`: an oracle's judgements as training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, fail, run_library


def score_command(
    ctx: typer.Context,
    generations: Annotated[
        Path, typer.Argument(help="Lists to judge (`prefopt generate` output).")
    ],
    oracle: Annotated[
        str, typer.Option("--oracle", help="verifier, reward_model or judge (docs/oracles.md).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Training data with scores or ranks.")] = Path(
        "scored.jsonl"
    ),
    cache: Annotated[str | None, typer.Option(help="Answer cache file; `none`: off.")] = None,
    cache_sampled: Annotated[
        bool, typer.Option("--cache-sampled", help="Also cache a sampling judge's answers.")
    ] = False,
) -> None:
    """Judge every list with an oracle: prefopt score FILE --oracle NAME [--oracle.OPTION=VALUE ...]."""
    from prefopt.oracles import ScoreConfig
    from prefopt.settings import ConfigError, build, split_override

    options = {}
    for extra in ctx.args:
        key, value = split_override(extra)
        if not key.startswith("oracle."):
            fail(f"{extra}: unknown option; oracle options are --oracle.NAME=VALUE")
        options[key.removeprefix("oracle.")] = value
    values = dict(
        generations=str(generations),
        oracle=oracle,
        oracle_options=options,
        out=str(out),
        cache=cache,
        cache_sampled=cache_sampled,
    )
    try:
        settings = build(ScoreConfig, values, "prefopt score")
    except ConfigError as error:
        fail(str(error))
    run_library(lambda: _score(settings))


def _score(settings) -> None:
    from prefopt.oracles import score

    result = score(settings, console=console())
    for failure, count in result.failures.items():
        console().print(
            f"{count} completions scored 0 because the verifier raised {failure}", highlight=False
        )
    console().print(result.summary(), highlight=False)
