"""The settings of `prefopt tune`: a base `prefopt train` config, a search space over any of its
settings, the objectives (eval metrics with directions), the budget, the sampler and pruner, and
the study's storage."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefopt.settings import ConfigError, build, set_dotted
from prefopt.train import TrainConfig


class Param(BaseModel):
    """One dimension of the search: `choices`, or a range `low`..`high` (integers when both ends are
    integers), on a log scale with `log`; `when` makes it apply only while other settings (of the
    base config or sampled before it) have the given values, e.g. {loss: dpo}."""

    model_config = ConfigDict(extra="forbid")

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("give choices, or low and high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
        elif self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices")
        elif not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low}")
        return self

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def example(self) -> Any:
        """A value in the space (to check at load time that the base config accepts it)."""
        return self.choices[0] if self.choices is not None else self.low

    def extremes(self) -> list[Any]:
        """Every choice, or both ends of the range: the values checked at load time."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class TuneConfig(BaseModel):
    """The settings of `prefopt tune`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base: dict[str, Any] | str = Field(
        ...,
        description="The `prefopt train` settings every trial starts from: a "
        "mapping, or the path of a YAML config.",
    )
    space: dict[str, Param] = Field(
        ...,
        description="Setting (dotted keys reach into mappings, e.g. "
        "loss_params.dpo.beta) -> {low, high, log} or {choices}, with "
        "`when` to apply it only under other settings' values.",
    )
    objectives: dict[str, Literal["maximize", "minimize"]] = Field(
        default_factory=lambda: {"reward_accuracy": "maximize"},
        description="Eval metrics at the end of a trial (or `seconds`, its wall time) and their directions; "
        "several make a Pareto front.",
    )
    n_trials: int | None = Field(
        8, ge=1, description="Trials in the study, over every process sharing it."
    )
    timeout_minutes: float | None = Field(
        None, gt=0, description="Stop starting trials after this long."
    )
    sampler: Literal["tpe", "gp", "nsga2", "random"] = Field(
        "tpe",
        description="Optuna's sampler: TPE, Gaussian process (needs scipy), NSGA-II or random.",
    )
    pruner: Literal["none", "median", "hyperband"] = Field(
        "none",
        description="Stop poor trials early on their "
        "intermediate evaluations (single "
        "objective only; set eval_every "
        "in base).",
    )
    seed: int = Field(0, description="Seeds the sampler.")
    storage: str | None = Field(
        None,
        description="An Optuna RDB storage URL (e.g. postgresql+psycopg://…) for "
        "processes and machines to share; default a SQLite file in "
        "output_dir.",
    )
    study_name: str = Field("prefopt", description="The study's name in its storage.")
    output_dir: str = Field(
        "runs/tune", description="Where each trial's run folder, study.json and the report go."
    )

    @field_validator("base", mode="after")
    @classmethod
    def _base_mapping(cls, value):
        if isinstance(value, str):
            try:
                loaded = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ValueError(f"{value}: no such config file") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{value}: a config must be a mapping of settings")
            return loaded
        return value

    @model_validator(mode="after")
    def _space_fits_the_base(self):
        if "output_dir" in self.space or "output_dir" in self.base:
            raise ValueError("output_dir: each trial's is output_dir/trial-N of the study")
        for key, param in self.space.items():
            for other in param.when:
                if (
                    other not in self.space
                    and other not in self.base
                    and other not in TrainConfig.model_fields
                ):
                    raise ValueError(f"space.{key}.when: {other!r} is not a setting")
        always = {key: p.example() for key, p in self.space.items() if not p.when}
        checks = [
            {**always, **p.when, key: value}
            for key, p in self.space.items()
            for value in p.extremes()
        ]
        for (
            params
        ) in checks:  # an unknown setting or a value the base refuses fails here, naming the key
            try:
                build(TrainConfig, trial_settings(self.base, params), "tune")
            except ConfigError as error:
                raise ValueError(f"space: {error}") from None
        if self.pruner != "none" and len(self.objectives) > 1:
            raise ValueError(
                "pruner: Optuna prunes single-objective studies only; use pruner: none with several "
                "objectives"
            )
        if not self.objectives:
            raise ValueError("objectives: name at least one eval metric")
        if self.n_trials is None and self.timeout_minutes is None:
            raise ValueError("n_trials or timeout_minutes: give a budget")
        return self


def trial_settings(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base settings with each (dotted) parameter set."""
    settings = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(settings, key, value)
    return settings


def setting(settings: dict[str, Any], key: str) -> Any:
    """A (dotted) setting's value, or None."""
    for part in key.split("."):
        if not isinstance(settings, dict) or part not in settings:
            return None
        settings = settings[part]
    return settings
