"""The built-in demo task: instruction following with checkable constraints (prefopt.demo.task)."""

from prefopt.demo.task import TRAINED, UNSEEN, make_prompts, write_task

__all__ = ["TRAINED", "UNSEEN", "make_prompts", "write_task"]
