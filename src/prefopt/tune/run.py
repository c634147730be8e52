"""`prefopt tune`: an Optuna study over the settings of `prefopt train`. Each trial is a training
run in a folder of its own (linked from the trial's user attributes); a trial that fails (a
non-finite loss, out of memory, a combination the settings refuse) is marked failed with its
reason and the study goes on. The study lives in an RDB storage (a SQLite file in the study's
folder, or any URL), so several processes and machines can share it: Optuna gives every trial a
number of its own, and the trial budget counts the trials of all of them."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import IntegrityError, ProgrammingError

from prefopt.files import write_json
from prefopt.settings import build, save_config
from prefopt.train import Reuse, TrainConfig, train
from prefopt.tune.config import Param, TuneConfig, setting, trial_settings
from prefopt.tune.summary import StudySummary, TrialRecord

# TrainingError and DataError are ValueErrors
FAILURES = (ArithmeticError, RuntimeError, ValueError, MemoryError)


@dataclasses.dataclass
class TuneResult:
    folder: Path
    trials: list[TrialRecord]
    best: list[int]  # the best trial, or the Pareto front's


def _sampler(config: TuneConfig):
    if config.sampler == "gp":
        try:
            import scipy  # noqa: F401  (Optuna's Gaussian process needs it)
        except ImportError:
            raise ValueError(
                "sampler: gp needs scipy (pip install scipy); tpe needs nothing more"
            ) from None
        return optuna.samplers.GPSampler(seed=config.seed)
    return {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
    }[config.sampler](seed=config.seed)


def _pruner(config: TuneConfig):
    return {
        "none": optuna.pruners.NopPruner(),
        "median": optuna.pruners.MedianPruner(n_warmup_steps=1),
        "hyperband": optuna.pruners.HyperbandPruner(),
    }[config.pruner]


def storage_url(config: TuneConfig) -> str:
    # relative to where it runs
    return config.storage or f"sqlite:///{Path(config.output_dir) / 'study.db'}"


def open_study(config: TuneConfig, resume: bool):
    """The study in its storage: new (an existing one is an error without `resume`), or continued."""
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    # a heartbeat marks the trials of a killed process failed when the next trial starts, and the
    # callback asks for them again
    storage = _storage(storage_url(config))
    directions = list(config.objectives.values())
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if config.study_name in names and not resume:
        raise ValueError(
            f"study {config.study_name!r} already exists in {storage_url(config)}: add --resume to "
            "continue it, or choose another study_name"
        )
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        directions=directions,
        sampler=_sampler(config),
        pruner=_pruner(config),
        load_if_exists=True,
    )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ValueError(
            f"study {config.study_name!r} has other objectives' directions than this study file"
        )
    return study


def _storage(url: str, attempts: int = 5):
    """The RDB storage. Two processes creating the same new database's tables at once collide (on
    PostgreSQL a duplicate key, or one reads the schema's version while the other is still writing
    it), and a moment later the tables are made."""
    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        for attempt in range(attempts):
            try:
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=60,
                    grace_period=180,
                    heartbeat_stale_trial_callback=retry,
                )
            except (IntegrityError, ProgrammingError, RuntimeError) as error:
                if isinstance(error, RuntimeError) and "schema" not in str(error):
                    raise
                if (
                    attempt == attempts - 1
                ):  # not a race: another program's tables (the label store's?)
                    raise ValueError(
                        f"storage {url}: Optuna cannot use this database ({str(error).splitlines()[0]}); "
                        "give the study a database of its own"
                    ) from None
                time.sleep(0.5 * (attempt + 1))


def suggest(trial, space: dict[str, Param], base: dict[str, Any]) -> dict[str, Any]:
    """The trial's values for the parameters whose `when` holds (in the space's order)."""
    params: dict[str, Any] = {}
    for key, param in space.items():
        current = lambda name: params[name] if name in params else setting(base, name)
        if any(current(name) != value for name, value in param.when.items()):
            continue
        if param.kind == "categorical":
            params[key] = trial.suggest_categorical(key, param.choices)
        elif param.kind == "int":
            params[key] = trial.suggest_int(key, param.low, param.high, log=param.log)
        else:
            params[key] = trial.suggest_float(
                key, float(param.low), float(param.high), log=param.log
            )
    return params


def _objective(config: TuneConfig, console: Console):
    reuse = Reuse()  # the trials of this process tokenize once and read the model from disk once

    def run_trial(trial) -> list[float]:
        started = time.perf_counter()
        folder = Path(config.output_dir) / f"trial-{trial.number}"
        trial.set_user_attr("run", str(folder))
        params = suggest(trial, config.space, config.base)
        console.print(f"[bold]trial {trial.number}[/]: {json.dumps(params)}", highlight=False)
        prune = config.pruner != "none"
        name = next(iter(config.objectives))

        def on_eval(step: int, metrics: dict) -> None:
            if prune and step > 0 and isinstance(metrics.get(name), float):
                trial.report(metrics[name], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}: {name} {metrics[name]:.4g}")

        try:
            settings = build(
                TrainConfig,
                trial_settings(
                    config.base,
                    {**params, "output_dir": str(folder), "report_group": config.study_name},
                ),  # fmt: skip
                f"trial {trial.number}",
            )
            result = train(settings, console=console, on_eval=on_eval, reuse=reuse)
        except FAILURES as error:
            trial.set_user_attr("failure", f"{type(error).__name__}: {error}")
            console.print(f"[yellow]trial {trial.number} failed: {error}[/]", highlight=False)
            raise
        seconds = time.perf_counter() - started
        # a trial's overhead: everything but its optimizer steps and evaluations
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("overhead_seconds", seconds - result.loop_seconds - result.eval_seconds)
        metrics = {**result.eval_end, "seconds": seconds}
        missing = [key for key in config.objectives if not isinstance(metrics.get(key), float)]
        if missing:
            reason = (
                f"no eval metric {', '.join(missing)} at the end (the run's eval has: "
                f"{', '.join(k for k, v in metrics.items() if isinstance(v, float))})"
            )
            trial.set_user_attr("failure", reason)
            raise ValueError(reason)
        return [metrics[key] for key in config.objectives]

    return run_trial


def tune(
    config: TuneConfig,
    *,
    resume: bool = False,
    n_trials: int | None = None,
    console: Console | None = None,
) -> TuneResult:
    """Run the study until its trial budget (over every process on its storage) or time is spent."""
    console = console or Console()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, resume)
    save_config(config, Path(config.output_dir) / "config.yaml")
    budget = n_trials or config.n_trials
    stop = [optuna.study.MaxTrialsCallback(budget, states=None)] if budget else []
    if (
        not budget or len(study.trials) < budget
    ):  # the callback counts every process's trials, running ones too
        timeout = config.timeout_minutes * 60 if config.timeout_minutes else None
        study.optimize(_objective(config, console), timeout=timeout, callbacks=stop, catch=FAILURES)
    result = summarize(study, config)
    _print_best(result, study, config, console)
    return result


def summarize(study, config: TuneConfig) -> TuneResult:
    """study.json in the study's folder: every trial, the best ones and the settings' importances."""
    trials: list[TrialRecord] = [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "run": t.user_attrs.get("run"),
            "failure": t.user_attrs.get("failure"),
            "seconds": t.user_attrs.get("seconds"),
            "overhead_seconds": t.user_attrs.get("overhead_seconds"),
        }
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        best = []
    else:  # one best trial (the first of equals), or the Pareto front
        best = (
            [study.best_trial.number]
            if len(config.objectives) == 1
            else [t.number for t in study.best_trials]
        )
    importances = {}
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        for n, (name, direction) in enumerate(config.objectives.items()):
            # the evaluator explains low values of its target
            sign = -1.0 if direction == "maximize" else 1.0
            try:
                with warnings.catch_warnings():  # it warns of the sign whatever the target
                    warnings.simplefilter("ignore", UserWarning)
                    importances[name] = optuna.importance.get_param_importances(
                        study, target=lambda t, n=n, sign=sign: sign * t.values[n]
                    )
            except (RuntimeError, ValueError):  # e.g. one distinct value per parameter
                pass
    folder = Path(config.output_dir)
    summary: StudySummary = {
        "study_name": config.study_name,
        "objectives": config.objectives,
        "storage": storage_url(config),
        "trials": trials,
        "best": best,
        "importances": importances,
    }
    write_json(folder / "study.json", summary)
    return TuneResult(folder, trials, best)


def _print_best(result: TuneResult, study, config: TuneConfig, console: Console) -> None:
    states: dict[str, int] = {}
    for trial in result.trials:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
    console.print(
        f"{len(result.trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in states.items())}); "
        f"study {config.study_name!r} in {storage_url(config)}",
        highlight=False,
    )
    if not result.best:
        return
    table = Table(title="the best trial" if len(result.best) == 1 else "the Pareto front")
    keys = sorted({key for t in result.trials if t["number"] in result.best for key in t["params"]})
    for column in ["trial", *config.objectives, *keys]:
        table.add_column(column, justify="right")
    for trial in (t for t in result.trials if t["number"] in result.best):
        table.add_row(
            str(trial["number"]),
            *(f"{v:.4g}" for v in trial["values"]),
            *(_shown(trial["params"].get(k)) for k in keys),
        )
    console.print(table)


def _shown(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
