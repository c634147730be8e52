"""`prefopt generate`: K completions per prompt, written as they finish."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.cli.common import console, fail, run_library


def generate_command(
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompts: any file `prefopt train` reads.")],
    model: Annotated[str, typer.Option(help="HF id or folder, .gguf, `default`, or a train output folder.")
                     ] = "default",
    out: Annotated[Path, typer.Option("--out", help="JSON Lines output, one line per prompt.")
                   ] = Path("generations.jsonl"),
    k: Annotated[int, typer.Option("--k", help="Completions per prompt.")] = 4,
    temperature: Annotated[float, typer.Option(help="0: greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="0: no limit.")] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="End a completion before this string "
                                                                  "(repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Completion k of a prompt depends on (seed, prompt, k) only.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts decoded together.")] = 16,
    backend: Annotated[str, typer.Option(help="prefopt, transformers or vllm.")] = "prefopt",
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run's output file.")] = False,
) -> None:
    """Sample K completions for every prompt: prefopt generate --prompts FILE --k 4 --out FILE."""
    from prefopt.generate import GenerateConfig
    from prefopt.settings import ConfigError, build

    values = dict(model=model, prompts=str(prompts), out=str(out), k=k, temperature=temperature, top_p=top_p,
                  top_k=top_k, max_new_tokens=max_new_tokens, stop=list(stop or []), seed=seed, batch_size=batch_size,
                  backend=backend, precision=precision)
    try:
        settings = build(GenerateConfig, values, "prefopt generate")
    except ConfigError as error:
        fail(str(error))
    run_library(lambda: _generate(settings, resume))


def _generate(settings, resume: bool) -> None:
    from prefopt.generate import generate

    result = generate(settings, resume=resume, console=console())
    console().print(f"{result.generated} prompts × {settings.k} completions ({result.tokens} tokens, "
                    f"{result.tokens_per_second:.0f} tokens/s) written to {result.out}"
                    + (f"; {result.already_done} were already there" if result.already_done else ""),
                    highlight=False)
