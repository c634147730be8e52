"""`prefopt rl`: step-wise group-relative RL (GRPO and its successors, RLOO, REINFORCE++, DisCO)
from verifiers, reward models and judges, on the shared-prompt engine."""

from prefopt.rl.config import RL_OBJECTIVES, RLConfig
from prefopt.rl.run import RLResult, rl

__all__ = ["RL_OBJECTIVES", "RLConfig", "RLResult", "rl"]
