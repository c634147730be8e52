"""`prefopt loop`: active, online preference learning in rounds, resumable at every stage."""

from prefopt.loop.config import LoopConfig
from prefopt.loop.round import Round, RoundRecord
from prefopt.loop.run import LoopContext, loop, policy_after

__all__ = ["LoopConfig", "LoopContext", "Round", "RoundRecord", "loop", "policy_after"]
