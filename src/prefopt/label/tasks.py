"""What a person is asked about an item. `rank`: compare its K ≥ 2 answers (a pair's choice or a
ranking, the store's original task). On one answer: `thumbs` (good or bad, with an optional
reason), `rating` (a point of the scale the lead wrote, each point with its anchor text) and
`edit` (the answer corrected in place). An item's task is its row's `task` field, else the
items file's (`prefopt label serve --task`), else rank for several answers and thumbs for one."""

from __future__ import annotations

from typing import Any

from prefopt.errors import LabelError

TASKS = ("rank", "thumbs", "rating", "edit")
# a pair's choices: a/b = completions[0]/[1] of the item, whatever side they were shown on
CHOICES = ("a", "b", "tie", "both_bad")
SINGLE = ("thumbs", "rating", "edit")  # the tasks on one answer
VERDICTS = ("good", "bad")
MAX_EDIT = 20_000  # characters of an edited answer
DEFAULT_SCALE = {"1": "", "2": "", "3": "", "4": "", "5": ""}


def task_of(record, default: str | None) -> str:
    """The task of an item read from `record` (its `task` field, else `default`, else by K)."""
    task = record.extra.get("task", default) or (
        "rank" if len(record.completions) > 1 else "thumbs"
    )
    if task not in TASKS:
        raise LabelError(f"{record.source}: task must be one of {', '.join(TASKS)}, got {task!r}",
                         field="task")  # fmt: skip
    want_one = task in SINGLE
    if want_one != (len(record.completions) == 1):
        need = "one answer (a `completion`)" if want_one else "two or more answers"
        raise LabelError(f"{record.source}: a {task} item needs {need}, it has "
                         f"{len(record.completions)}", field="task")  # fmt: skip
    return task


def scale_of(record, default: dict | None) -> dict[str, str] | None:
    """A rating item's scale: {point: anchor text} with whole-number points (the row's `scale`,
    else the file's, else 1 to 5 without anchors); None for other tasks."""
    scale = record.extra.get("scale", default) or DEFAULT_SCALE
    try:
        points = sorted(int(point) for point in scale)
    except (TypeError, ValueError):
        points = []
    if len(points) < 2 or not all(isinstance(text, str) for text in scale.values()):
        raise LabelError(f"{record.source}: scale must map two or more whole-number points to "
                         f'anchor texts ({{"1": "useless", "5": "perfect"}}), got {scale!r}',
                         field="scale")  # fmt: skip
    anchors = {str(int(point)): text for point, text in scale.items()}
    return {str(p): anchors.get(str(p), "") for p in range(points[0], points[-1] + 1)}


def single_value(task: str, scale: dict | None, answer: Any, *, verdict: str | None,
                 rating: int | None, edited: str | None) -> dict:  # fmt: skip
    """A judgement of one answer as the store keeps it ({"label"}, {"rating"} or {"edited"}),
    checked against the item's task; the error names the field the request must give."""
    given = {"verdict": verdict, "rating": rating, "edited": edited}
    wanted = {"thumbs": "verdict", "rating": "rating", "edit": "edited"}[task]
    extra = [name for name, value in given.items() if value is not None and name != wanted]
    if given[wanted] is None or extra:
        raise LabelError(f"a {task} item takes `{wanted}` only", field=wanted)
    if task == "thumbs":
        if verdict not in VERDICTS:
            raise LabelError("verdict must be good or bad", field="verdict")
        return {"label": verdict == "good"}
    if task == "rating":
        points = [int(point) for point in scale]
        if isinstance(rating, bool) or not isinstance(rating, int) or rating not in points:
            raise LabelError(f"rating must be a point of the scale, {points[0]} to {points[-1]}",
                             field="rating")  # fmt: skip
        return {"rating": rating}
    if not edited.strip() or len(edited) > MAX_EDIT:
        raise LabelError(f"edited must be the corrected answer, 1 to {MAX_EDIT} characters",
                         field="edited")  # fmt: skip
    return {"edited": edited, "changed": edited != answer}


def gold_value(task: str, scale: dict | None, gold: Any, source: str) -> dict:
    """A one-answer item's known answer (its row's `gold`): true/false for thumbs, a point for
    ratings; edits have none."""
    try:
        if task == "thumbs" and isinstance(gold, bool):
            return {"label": gold}
        if task == "rating":
            return single_value(task, scale, None, verdict=None, rating=gold, edited=None)
    except LabelError as error:
        raise LabelError(f"{source}: gold: {error}", field="gold") from None
    raise LabelError(f"{source}: gold of a {task} item must be "
                     f"{'true or false' if task == 'thumbs' else 'a point of its scale'}, got "
                     f"{gold!r}" if task != "edit" else f"{source}: edit items have no gold",
                     field="gold")  # fmt: skip


def gold_of(record, task: str = "rank", scale: dict | None = None) -> list[int] | dict | None:
    """A record's known answer: as ranks for a pair (`"gold": "a" | "b" | "tie"`) or a list (a
    ranking); as a value for one answer."""
    gold = getattr(record, "extra", {}).get("gold")
    if gold is None:
        return None
    if task in SINGLE:
        return gold_value(task, scale, gold, record.source)
    try:
        return ranks_of(
            len(record.completions),
            gold if isinstance(gold, str) else None,
            gold if isinstance(gold, list) else None,
        )
    except LabelError as error:
        raise LabelError(f"{record.source}: gold: {error}", field="gold") from None


def ranks_of(k: int, choice: str | None, ranking: list[int] | None) -> list[int]:
    """A rank task's judgement as the rank of each completion in item order (1 = best, ties
    equal): a pair's choice, or a list's ranking, checked."""
    if k == 2:
        if choice not in CHOICES:
            raise LabelError(
                f"choice must be one of {', '.join(CHOICES)} for a pair", field="choice"
            )
        return {"a": [1, 2], "b": [2, 1], "tie": [1, 1], "both_bad": [1, 1]}[choice]
    if choice is not None:
        raise LabelError(
            f"this item has {k} completions: give a ranking, not a choice", field="choice"
        )
    if not isinstance(ranking, list) or len(ranking) != k:
        raise LabelError(
            f"ranking must give a rank for each of the {k} completions", field="ranking"
        )
    if any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= k for r in ranking):
        raise LabelError(f"ranks are whole numbers from 1 (best) to {k}", field="ranking")
    # Ties share the best rank of their group ("1224" style): rank = 1 + number of strictly better.
    if any(r != 1 + sum(other < r for other in ranking) for r in ranking):
        raise LabelError(
            "ranking is not a ranking: rank r needs exactly r−1 completions ranked better "
            f"(got {ranking})",
            field="ranking",
        )
    return list(ranking)
