"""The demo: the built-in task (instruction following with checkable constraints, prefopt.demo.task),
the loop on it (prefopt.demo.run) and its report (prefopt.demo.report)."""

from prefopt.demo.run import LOOP_SETTINGS, DemoResult, demo
from prefopt.demo.task import TRAINED, UNSEEN, make_prompts, satisfaction, write_task

__all__ = [
    "LOOP_SETTINGS",
    "TRAINED",
    "UNSEEN",
    "DemoResult",
    "demo",
    "make_prompts",
    "satisfaction",
    "write_task",
]
