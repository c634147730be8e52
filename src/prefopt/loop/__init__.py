"""`prefopt loop`: active, online preference learning in rounds, resumable at every stage."""

from prefopt.loop.config import LoopConfig
from prefopt.loop.run import loop

__all__ = ["LoopConfig", "loop"]
