"""`prefopt tune`: Optuna studies over any setting of `prefopt train`, single- or multi-objective,
shared by processes and machines through the study's storage."""

from prefopt.tune.config import Param, TuneConfig
from prefopt.tune.run import TuneResult, tune

__all__ = ["Param", "TuneConfig", "TuneResult", "tune"]
