"""Experiment trackers through accelerate's tracker API (`report_to`, as transformers and TRL name
it): the run's resolved settings as its parameters and every metrics.jsonl line at its step
(`train/…` and `eval/…`), in the project `prefopt`, the run named after its output folder. Each
tracker keeps its files in the run folder where it keeps files at all: TensorBoard's event files
in output_dir/prefopt, MLflow's store in output_dir/mlflow.db (unless MLFLOW_TRACKING_URI says
otherwise), W&B's in output_dir/wandb (offline with WANDB_MODE=offline); trackio keeps its own
local database."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

REPORT_TO = ("tensorboard", "wandb", "mlflow", "trackio")


def tracker_kwargs(report_to: list[str], out: Path) -> dict[str, Any]:
    """What the Accelerator is built with for `report_to` (nothing when it is empty)."""
    if not report_to:
        return {}
    if "mlflow" in report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow  # here: only runs that report to MLflow need it

        out.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    return {"log_with": list(report_to), "project_dir": str(out)}


PROJECT = "prefopt"


def start_trackers(accelerator, settings: dict, out: Path, group: str | None = None) -> None:
    """Open each tracker's run, named after the output folder (grouped, for a tuning study's
    trials), with `settings` as its parameters."""
    if not accelerator.log_with:
        return
    name = out.resolve().name
    init = {
        "tensorboard": {},
        "wandb": {"dir": str(out), "name": name, "group": group},
        "mlflow": {"run_name": name, "tags": {"group": group} if group else None},
        "trackio": {"name": name, "group": group} if group else {"name": name},
    }
    chosen = {tracker: init[tracker] for tracker in REPORT_TO if _wants(accelerator, tracker)}
    accelerator.init_trackers(PROJECT, config=flat(settings), init_kwargs=chosen)


def _wants(accelerator, tracker: str) -> bool:
    return any(str(getattr(kind, "value", kind)) == tracker for kind in accelerator.log_with)


def end_trackers(accelerator) -> None:
    """Close every tracker's run (its files flushed). Not accelerate's `end_training`, which also
    ends the process group that later work (a checkpoint, the next run of a study) still uses."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def log_record(accelerator, record: dict) -> None:
    """One metrics.jsonl line to every tracker, its numbers under `train/` or `eval/`."""
    if not accelerator.log_with:
        return
    prefix = record.get("split", "train")
    values = {f"{prefix}/{key}": value for key, value in flat(record).items()
              if key not in ("step", "split") and isinstance(value, int | float)
              and not isinstance(value, bool) and math.isfinite(value)}  # fmt: skip
    if values:
        accelerator.log(values, step=int(record["step"]))


def flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings and metrics as one level ("score/value"); lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}/")
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = value if value is None or isinstance(value, bool | int | float | str) \
                else str(value)  # fmt: skip
    return out
