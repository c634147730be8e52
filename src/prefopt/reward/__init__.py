"""`prefopt reward train`: reward models from pairs and ranked lists, on the shared-prompt engine."""

from prefopt.reward.config import RewardConfig
from prefopt.reward.objective import REWARD_OBJECTIVES, RewardObjective
from prefopt.reward.run import reward_task, reward_train

__all__ = ["REWARD_OBJECTIVES", "RewardConfig", "RewardObjective", "reward_task", "reward_train"]
