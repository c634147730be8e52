"""Experiment trackers through accelerate's tracker classes (`report_to`, as transformers and TRL
name it): the run's resolved settings as its parameters, every metrics.jsonl line at its step
(`train/…` and `eval/…`) and, at the end, the report's figures as images, in the project
`prefopt`, the run named after its output folder. Each tracker keeps its files in the run folder
where it keeps files at all: TensorBoard's event files in output_dir/prefopt, MLflow's store in
output_dir/mlflow.db (unless MLFLOW_TRACKING_URI says otherwise), W&B's in output_dir/wandb
(offline with WANDB_MODE=offline); trackio keeps its own local database."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefopt.data import DataError

REPORT_TO = ("tensorboard", "wandb", "mlflow", "trackio")
PROJECT = "prefopt"


@dataclasses.dataclass
class Trackers:
    """The open tracker runs of one prefopt run: none without `report_to`, and none off the main
    process (one run per job, as accelerate does)."""

    opened: list = dataclasses.field(default_factory=list)  # accelerate GeneralTrackers

    @classmethod
    def open(cls, report_to: list[str], out: Path, settings: dict, group: str | None = None,
             name: str | None = None):  # fmt: skip
        """Start each tracker's run, named `name` (default: `out`'s folder) and grouped under
        `group` (a tuning study's trials, a loop's rounds), with `settings` as its parameters."""
        from accelerate import PartialState

        if not report_to or not PartialState().is_main_process:
            return cls()
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        available = {str(kind) for kind in get_available_trackers()}
        if missing := [name for name in report_to if name not in available]:
            raise DataError(f"report_to: {', '.join(missing)} not installed: "
                            "pip install -e '.[trackers]'")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        artifacts = _mlflow_store(out) if "mlflow" in report_to else None
        name = name or out.resolve().name
        # W&B and MLflow keep one run per process unless told: a loop's run stays open while its
        # rounds' training runs (an MLflow run nested in it)
        arguments = {
            "tensorboard": {"logging_dir": str(out)},
            "wandb": {
                "dir": str(out),
                "name": name,
                "group": group,
                "reinit": "create_new",
                "config": flat(settings),
            },  # fmt: skip
            "mlflow": {
                "run_name": name,
                "tags": {"group": group} if group else None,
                "nested_run": True,
                "logging_dir": artifacts,
            },  # fmt: skip
            "trackio": {"name": name, "group": group} if group else {"name": name},
        }
        opened = [LOGGER_TYPE_TO_CLASS[tracker](PROJECT, **arguments[tracker])
                  for tracker in REPORT_TO if tracker in report_to]  # fmt: skip
        for tracker in opened:
            tracker.start()
            if tracker.name != "wandb":  # its settings went with the run's start (W&B's
                tracker.store_init_configuration(flat(settings))  # update reads the last run)
        return cls(opened)

    def log(self, record: dict) -> None:
        """One metrics line, its numbers under `train/` or `eval/` (a loop's under `round/`)."""
        prefix = record.get("split", "train")
        values = {f"{prefix}/{key}": value for key, value in flat(record).items()
                  if key not in ("step", "split") and isinstance(value, int | float)
                  and not isinstance(value, bool) and math.isfinite(value)}  # fmt: skip
        for tracker in self.opened if values else ():
            tracker.log(values, step=int(record["step"]))

    def log_report(self, draw: Callable[[], object], step: int) -> None:
        """The figures `draw()` draws (the run's report), as images under `report/` where the
        tracker takes them (TensorBoard, W&B, trackio as images; MLflow as figure artifacts)."""
        if not self.opened:
            return
        from prefopt.figures import drawn_figures

        with drawn_figures() as figures:
            draw()
            for tracker in self.opened:
                _log_figures(tracker, figures, step)

    def close(self) -> None:
        """End every run (its files flushed). Not accelerate's `end_training`, which also ends the
        process group that later work (a checkpoint, the next run of a study) still uses."""
        for tracker in self.opened:
            tracker.finish()
        self.opened = []


_OUR_MLFLOW_STORE: list[str] = []  # the tracking URI this process chose last (MLflow keeps it
# in MLFLOW_TRACKING_URI, where a user's own choice is also found)


def _mlflow_store(out: Path) -> str | None:
    """Where MLflow keeps the run: the user's MLFLOW_TRACKING_URI; the store of a run open in this
    process (a loop's, whose rounds nest in it); else out/mlflow.db with its artifacts (the report's
    figures) in out/mlartifacts, returned."""
    import mlflow  # here: only runs that report to MLflow need it

    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    if mlflow.active_run() is not None or (chosen and chosen not in _OUR_MLFLOW_STORE):
        return None
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    _OUR_MLFLOW_STORE[:] = [uri]
    return str((out / "mlartifacts").resolve())


def _log_figures(tracker, figures: list, step: int) -> None:
    """(name, matplotlib figure, PNG) each under `report/NAME`, in one call where the tracker
    takes a step's images together."""
    import numpy
    from PIL import Image

    images = {f"report/{name}": Image.open(io.BytesIO(png)).convert("RGB")
              for name, _, png in figures}  # fmt: skip
    if tracker.name == "tensorboard":
        arrays = {key: numpy.asarray(image)[None] for key, image in images.items()}
        tracker.log_images(arrays, step=step, dataformats="NHWC")
    elif tracker.name == "wandb":
        tracker.log_images({key: [image] for key, image in images.items()}, step=step)
    elif tracker.name == "mlflow":
        for name, figure, _ in figures:
            tracker.log_figure(figure, f"report/{name}.png")
    elif tracker.name == "trackio":
        import trackio

        tracker.log({key: trackio.Image(image) for key, image in images.items()}, step=step)


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
