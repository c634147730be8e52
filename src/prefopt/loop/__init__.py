"""`prefopt loop`: active, online preference learning in rounds, resumable at every stage."""

from prefopt.loop.config import LoopConfig
from prefopt.loop.run import loop, policy_after

__all__ = ["LoopConfig", "loop", "policy_after"]
