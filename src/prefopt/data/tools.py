"""The export formats of the labelling tools teams already use, read as prefopt rows: Argilla 2.x
datasets saved with `Dataset.to_disk` (a folder with `.argilla/settings.json` and `records.json`;
ranking, rating, label and text questions) and Label Studio JSON exports (pairwise, ranker,
rating, choices and textarea results); and prefopt's items written as Label Studio tasks.

Each submitted response becomes one row: a ranking a ranked list, a rating a rated answer, a label
a thumbs verdict, a text answer an edit of the response. The row keeps the tool's own fields
(Argilla's record fields, Label Studio's task data), so `columns` can name the prompt and the
answer where the tool's names are not the usual ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefopt.data.records import DataError

PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query")
ANSWER_NAMES = ("completion", "response", "answer", "output", "text")
GOOD = {"good", "yes", "true", "up", "accept", "accepted", "positive", "correct", "thumbs_up", "👍"}
BAD = {
    "bad",
    "no",
    "false",
    "down",
    "reject",
    "rejected",
    "negative",
    "incorrect",
    "thumbs_down",
    "👎",
}


def is_argilla_folder(path: Path) -> bool:
    return (path / ".argilla" / "settings.json").is_file()


def argilla_rows(path: Path, columns: dict | None = None) -> Iterator[tuple[int, Any]]:
    """(record number, row) for every submitted response of an Argilla dataset folder; `columns`
    may name the field that holds the judged answer (`completion`)."""
    settings = json.loads((path / ".argilla" / "settings.json").read_text(encoding="utf-8"))
    kinds = {q["name"]: q.get("settings", {}).get("type") for q in settings.get("questions", [])}
    records_path = path / "records.json"
    if not records_path.is_file():
        raise DataError("an Argilla folder without records.json (export it with_records=True)",
                        source=str(path))  # fmt: skip
    for number, record in enumerate(json.loads(records_path.read_text(encoding="utf-8")), 1):
        fields = record.get("fields") or {}
        for question, responses in (record.get("responses") or {}).items():
            for response in responses:
                if response.get("status", "submitted") != "submitted":
                    continue
                try:
                    row = _feedback_row(fields, kinds.get(question), response.get("value"),
                                        _named(columns))  # fmt: skip
                    yield number, _usual_prompt(row)
                except DataError as error:
                    yield number, DataError(f'question "{question}": {error.detail}',
                                            reason=error.reason)  # fmt: skip


def _named(columns: dict | None) -> list[str]:
    """The answer's field as `columns` names it, tried before the usual names."""
    return [columns["completion"]] if columns and "completion" in columns else []


def _feedback_row(fields: dict, kind: str | None, value: Any, named: list[str]) -> dict:
    """The row one answer to one question makes, the record's fields kept beside it."""
    if kind == "ranking":
        return {**fields, **_ranked(fields, value)}
    if kind == "rating":
        return {**fields, "completion": _answer(fields, named), "rating": value}
    if kind == "label_selection":
        return {**fields, "completion": _answer(fields, named), "label": verdict(value)}
    if kind == "text":
        return {**fields, "completion": _answer(fields, named), "edited": value}
    raise DataError(f"a {kind} question does not make training data (ranking, rating, "
                    "label_selection or text questions do)", reason="unsupported question")  # fmt: skip


def _ranked(fields: dict, value: Any) -> dict:
    """A ranking's options name the record's fields that hold the answers: best first as a list
    of names, or [{"value", "rank"}] (ties share a rank)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"a ranking must be a list of options, got {value!r}", reason="wrong type")
    if all(isinstance(item, dict) for item in value):
        names, ranks = [item.get("value") for item in value], [item.get("rank") for item in value]
    else:
        names, ranks = value, list(range(1, len(value) + 1))
    missing = [name for name in names if name not in fields]
    if missing:
        raise DataError(f"ranked options {missing} are not fields of the record (the options of "
                        "a ranking name the fields holding the answers)", reason="unknown option")  # fmt: skip
    return {"completions": [fields[name] for name in names], "ranks": ranks}


def verdict(value: Any) -> bool:
    """A label as people name one: good/bad, yes/no, accept/reject, 👍/👎 and the like."""
    chosen = value[0] if isinstance(value, list) and len(value) == 1 else value
    word = str(chosen).strip().lower()
    if word in GOOD or word in BAD:
        return word in GOOD
    raise DataError(f"the label {chosen!r} is neither good ({', '.join(sorted(GOOD))}) nor bad "
                    f"({', '.join(sorted(BAD))})", reason="unknown label")  # fmt: skip


def is_label_studio(rows: Any) -> bool:
    return (
        isinstance(rows, list)
        and bool(rows)
        and all(
            isinstance(row, dict) and "data" in row and "annotations" in row for row in rows[:5]
        )
    )


def label_studio_rows(tasks: list[dict], columns: dict | None = None) -> Iterator[tuple[int, Any]]:
    """(task number, row) for every result of every annotation that was not cancelled; `columns`
    may name the field that holds the judged answer (`completion`)."""
    for number, task in enumerate(tasks, 1):
        data = task.get("data") or {}
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                try:
                    yield number, _usual_prompt(_result_row(data, result, _named(columns)))
                except DataError as error:
                    yield number, error


def _result_row(data: dict, result: dict, named: list[str]) -> dict:
    kind, value = result.get("type"), result.get("value") or {}
    targets = [name.strip() for name in str(result.get("to_name", "")).split(",") if name.strip()]
    if kind == "pairwise":
        left, right = (data[name] for name in _present(data, targets, 2))
        chosen, rejected = (left, right) if value.get("selected") == "left" else (right, left)
        return {**data, "chosen": chosen, "rejected": rejected}
    if kind == "ranker":
        return {**data, **_ranker(data, targets, value.get("ranker"))}
    answer = _answer(data, named + targets)
    if kind == "rating":
        return {**data, "completion": answer, "rating": value.get("rating")}
    if kind == "choices":
        return {**data, "completion": answer, "label": verdict(value.get("choices"))}
    if kind == "textarea":
        text = value.get("text")
        return {**data, "completion": answer, "edited": text[0] if isinstance(text, list) else text}
    raise DataError(f'a "{kind}" result does not make training data (pairwise, ranker, rating, '
                    "choices or textarea results do)", reason="unsupported result")  # fmt: skip


def _usual_prompt(row: dict) -> dict:
    """The prompt under its usual names (instruction, question, …) when the tool's is not
    `prompt` (`columns` still names any other)."""
    if "prompt" not in row:
        name = next((name for name in PROMPT_NAMES if name in row), None)
        if name is not None:
            return {**row, "prompt": row[name]}
    return row


def _present(data: dict, names: list[str], count: int) -> list[str]:
    if len(names) != count or any(name not in data for name in names):
        raise DataError(f"the result's to_name {names} does not name {count} fields of the task's "
                        f"data ({', '.join(data)})", reason="unknown field")  # fmt: skip
    return names


def _answer(data: dict, targets: list[str]) -> Any:
    """The answer a rating, choice or correction is about: the field the result points at when it
    is not the prompt, else the first usual answer field."""
    for name in targets + list(ANSWER_NAMES):
        if name in data and name not in PROMPT_NAMES and isinstance(data[name], str | list):
            return data[name]
    raise DataError(f"no answer field among the task's data ({', '.join(data)}); name it with "
                    "columns: {completion: FIELD}", reason="missing completion")  # fmt: skip


def _ranker(data: dict, targets: list[str], ranker: Any) -> dict:
    """Label Studio's ranker over a list of items {"id", "body" or "title"}: the first bucket's
    ids in ranked order (one bucket: the whole ranking)."""
    (items_field,) = _present(data, targets[:1], 1)
    items = {str(item.get("id")): item.get("body", item.get("title")) for item in data[items_field]}
    if not isinstance(ranker, dict) or not ranker:
        raise DataError(
            f"a ranker result needs its ranked ids, got {ranker!r}", reason="wrong type"
        )
    ids = [str(item) for item in next(iter(ranker.values()))]
    unknown = [item for item in ids if item not in items]
    if unknown:
        raise DataError(
            f"ranked ids {unknown} are not items of {items_field!r}", reason="unknown item"
        )
    rest = {key: value for key, value in data.items() if key != items_field}
    return {**rest, "completions": [items[item] for item in ids],
            "ranks": list(range(1, len(ids) + 1))}  # fmt: skip


def label_studio_tasks(rows: list[dict]) -> list[dict]:
    """prefopt items ({"prompt", "completions"}) as Label Studio tasks: one answer (`answer`) for
    its rating, choices or textarea templates, two for its Pairwise template (`answer1`,
    `answer2`), more for its Ranker over a List (`items`)."""
    tasks = []
    for row in rows:
        prompt, answers = row["prompt"], row["completions"]
        text = lambda value: (
            value if isinstance(value, str) else "\n".join(m["content"] for m in value)
        )
        data = {"prompt": text(prompt)}
        if len(answers) == 1:
            data["answer"] = text(answers[0])
        elif len(answers) == 2:
            data |= {"answer1": text(answers[0]), "answer2": text(answers[1])}
        else:
            data["items"] = [{"id": str(i), "body": text(a)} for i, a in enumerate(answers)]
        tasks.append({"data": data})
    return tasks
