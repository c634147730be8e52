"""`prefopt train`: its settings, the loop, the reference pass, metrics and checkpoints."""

from prefopt.train.config import TrainConfig
from prefopt.train.loop import TrainResult, TrainState, train
from prefopt.train.metrics import HEADLINE_METRICS, brief, headline

__all__ = ["HEADLINE_METRICS", "TrainConfig", "TrainResult", "TrainState", "brief", "headline", "train"]
