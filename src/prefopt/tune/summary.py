"""study.json, typed: a tuning study's trials, its best ones and the settings' importances (what
`prefopt report` reads)."""

from __future__ import annotations

from typing import TypedDict


class TrialRecord(TypedDict):
    number: int
    state: str  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    values: list[float] | None  # one per objective, for a complete trial
    params: dict  # the settings the trial tried
    run: str | None  # its run folder
    failure: str | None
    seconds: float | None
    overhead_seconds: float | None  # the trial's time outside training and evaluation


class StudySummary(TypedDict):
    study_name: str
    objectives: dict[str, str]  # metric -> maximize | minimize
    storage: str
    trials: list[TrialRecord]
    best: list[int]  # the best trial's number, or the Pareto front's
    importances: dict[str, dict[str, float]]  # per objective: setting -> importance
