"""`prefopt train`: its settings, the loop, the reference pass, metrics and checkpoints."""

from prefopt.train.config import RunSettings, TrainConfig
from prefopt.train.inputs import Reuse
from prefopt.train.loop import TrainResult, TrainState, train
from prefopt.train.metrics import HEADLINE_METRICS, brief, headline
from prefopt.train.task import POLICY, Task

__all__ = [
    "HEADLINE_METRICS",
    "POLICY",
    "Reuse",
    "RunSettings",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "brief",
    "headline",
    "train",
]
