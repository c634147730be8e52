"""The `prefopt` command line. Each command parses its arguments, loads its settings and calls one
library function; heavy imports happen inside the commands that need them."""

from __future__ import annotations

import sys

import typer

from prefopt.cli import (
    demo,
    evaluate,
    generate,
    label,
    loop,
    losses,
    report,
    reward,
    rl,
    score,
    train,
    tune,
)

app = typer.Typer(
    help="prefopt: align language models from comparisons and rankings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(context: typer.Context) -> None:
    """prefopt: align language models from comparisons and rankings."""
    context.call_on_close(_leave_process_group)


def _leave_process_group() -> None:
    """Destroy the process group of a run of several processes (torchrun, accelerate launch) when
    the command ends, as PyTorch asks: left to the interpreter's exit, gloo's worker threads can
    outlive it and abort the process (SIGABRT after a run that succeeded)."""
    distributed = sys.modules.get("torch.distributed")  # a run of several imported it
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


from prefopt.cli.common import settings_command  # noqa: E402

_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}  # --key=value settings

app.command("losses")(losses.losses_command)
app.command(
    "train", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.train.config:TrainConfig")
)(train.train_command)
app.command(
    "generate",
    context_settings=_EXTRA_ARGS,
    cls=settings_command("prefopt.generate.config:GenerateConfig"),
)(generate.generate_command)
app.command(
    "score", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.oracles:ScoreConfig")
)(score.score_command)
app.command(
    "eval", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.evaluate.run:EvalConfig")
)(evaluate.eval_command)
app.command("report")(report.report_command)
app.command(
    "loop", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.loop.config:LoopConfig")
)(loop.loop_command)
app.command("rl", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.rl.config:RLConfig"))(
    rl.rl_command
)
app.command("demo")(demo.demo_command)
app.command(
    "tune", context_settings=_EXTRA_ARGS, cls=settings_command("prefopt.tune.config:TuneConfig")
)(tune.tune_command)
app.add_typer(label.label_app, name="label")
app.add_typer(reward.reward_app, name="reward")
