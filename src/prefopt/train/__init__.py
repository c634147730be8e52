"""`prefopt train`: its settings, the loop, the reference pass, metrics and checkpoints."""

from prefopt.train.config import RunSettings, TrainConfig
from prefopt.train.loop import POLICY, Reuse, Task, TrainResult, TrainState, train
from prefopt.train.metrics import HEADLINE_METRICS, brief, headline

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
