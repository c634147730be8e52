"""Read preference data from JSON Lines, JSON, Parquet, CSV, a `datasets` folder saved with
`save_to_disk`, or a Hub data set id, into PreferenceRecords. Rows are numbered from 1 as a
person counts them (the line of a JSON Lines file, the data row of a CSV)."""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefopt.data.layouts import apply_columns, check_columns, grouped_layout, recognise
from prefopt.data.records import DataError, PreferenceRecord, label_value, parse_row
from prefopt.data.tools import argilla_rows, is_argilla_folder, is_label_studio, label_studio_rows

_LIST_FIELDS = ("completions", "scores", "ranks", "chosen", "rejected", "prompt")
_NUMBER_FIELDS = ("score", "rating")  # a CSV cell is text; these hold one number


@dataclasses.dataclass
class LoadedData:
    records: list[PreferenceRecord]
    skipped: collections.Counter  # reason -> count of rows dropped with skip_invalid
    source: str
    # layout -> records
    layouts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        text = f"{self.source}: {len(self.records)} records"
        if set(self.layouts) - {"prefopt"}:
            text += (
                " (layout: "
                + ", ".join(
                    f"{name}" + (f" {count}" if len(self.layouts) > 1 else "")
                    for name, count in self.layouts.most_common()
                )
                + ")"
            )
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())} invalid rows ({reasons})"
        return text


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON Lines file that prefopt wrote itself (runs, rounds, answers); blank lines
    skipped. Data from people goes through load_records, which names a bad row. Lines end at a newline
    only: str.splitlines also breaks at U+2028, U+2029 and \\x85, which json.dumps(ensure_ascii=False)
    leaves inside strings (a sampled answer held U+2029)."""
    return [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]


def load_records(
    source: str | Path,
    *,
    skip_invalid: bool = False,
    require_completions: bool = True,
    require_scores: bool = True,
    split: str = "train",
    columns: dict[str, str] | None = None,
    min_completions: int = 2,
    single_answers: bool = False,
) -> LoadedData:
    """Load and validate every row, in prefopt's layout or a well-known one (prefopt.data.layouts),
    with the table's fields renamed by `columns`. By default the first bad row raises a DataError
    naming the file, row and field; with `skip_invalid`, bad rows are dropped and counted by reason.
    Single answers with a `label` or `rating` are grouped by prompt into lists (a prompt's answers
    compared by their labels or ratings); with `single_answers`, each is kept as a record of its
    own (for the objectives that train on single answers: data/feedback.py)."""
    name = str(source)
    check_columns(columns)
    records: list[tuple[int, PreferenceRecord]] = []
    skipped: collections.Counter = collections.Counter()
    layouts: collections.Counter = collections.Counter()
    groups: dict[str, list[tuple[int, dict]]] = {}  # one response per row, by prompt

    def fail(error: DataError, where: int | str) -> None:
        if not skip_invalid:
            row = where if isinstance(where, int) else None
            raise DataError(
                error.detail if row is not None else f"{where}: {error.detail}",
                source=name,
                row=row,
                reason=error.reason,
            ) from None
        skipped[error.reason] += 1

    for row_number, row in _rows(name, split, columns):
        try:
            if isinstance(row, DataError):
                raise row
            row = apply_columns(row, columns)
            feedback = None if single_answers else _feedback_field(row)
            if feedback is not None:
                parse_row(row)  # its label or rating checked here, where the row is named
            grouped = grouped_layout(row) or feedback
            if grouped is not None:
                key = json.dumps([grouped, row["prompt"]], sort_keys=True)
                groups.setdefault(key, []).append((row_number, row))
                continue
            layout, row = recognise(row)
            record = parse_row(
                row,
                require_completions=require_completions,
                require_scores=require_scores,
                min_completions=min_completions,
            )
        except DataError as error:
            fail(error, row_number)
            continue
        layouts[layout] += 1
        records.append(
            (row_number, dataclasses.replace(record, source=f"{name}, row {row_number}"))
        )
    for members in groups.values():
        numbers = [number for number, _ in members]
        where = f"row {numbers[0]}" if len(numbers) == 1 else "rows " + ", ".join(map(str, numbers))
        try:
            record = parse_row(
                _grouped_row([row for _, row in members]),
                require_completions=require_completions,
                require_scores=require_scores,
                min_completions=min_completions,
            )
        except DataError as error:
            fail(_feedback_error(members[0][1], len(members), error),
                 numbers[0] if len(numbers) == 1 else where)  # fmt: skip
            continue
        layouts["one response per row, grouped by prompt"] += 1
        records.append((numbers[0], dataclasses.replace(record, source=f"{name}, {where}")))
    if not records:
        raise DataError(
            "no valid rows" + (f" (skipped {sum(skipped.values())})" if skipped else ""),
            source=name,
        )
    return LoadedData(
        records=[record for _, record in sorted(records, key=lambda item: item[0])],
        skipped=skipped,
        source=name,
        layouts=layouts,
    )


def _feedback_field(row: Any) -> tuple[str, str] | None:
    """("completion", "label" or "rating") for a single answer with a verdict or a rating."""
    if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
        return None
    given = [field for field in ("label", "rating", "edited") if field in row]
    return ("completion", given[0]) if given in (["label"], ["rating"]) else None


def _feedback_error(row: dict, count: int, error: DataError) -> DataError:
    """What a prompt's single answers lack to be compared (a second answer, or a difference), said
    in the words of feedback; any other error as it was."""
    field = (_feedback_field(row) or (None, None))[1]
    if field is None or error.reason not in ("too few completions", "all scores tied"):
        return error
    single = "train single answers with loss kto, bco or apo_zero_unpaired"
    if count == 1:
        return DataError(
            f'one answer with a "{field}" and no other answer to its prompt to compare it with '
            f"({single})",
            reason="single answer",
        )
    return DataError(
        f'all {count} answers to this prompt have the same "{field}": nothing to prefer ({single})',
        reason="all scores tied",
    )


def _grouped_row(rows: list[dict]) -> dict:
    """Rows of one prompt, one response each (HelpSteer2: `response` and `helpfulness`; a single
    answer's `label` or `rating`), as a list."""
    text, score = grouped_layout(rows[0]) or _feedback_field(rows[0])
    extra = {k: v for k, v in rows[0].items() if k not in ("prompt", text, score)}
    scores = [row[score] for row in rows]
    if score == "label":
        scores = [1.0 if label_value(value) else 0.0 for value in scores]
    return {**extra, "prompt": rows[0]["prompt"], "completions": [row[text] for row in rows],
            "scores": scores}  # fmt: skip


def _rows(name: str, split: str, columns: dict | None = None) -> Iterator[tuple[int, Any]]:
    path = Path(name)
    if path.is_dir() and is_argilla_folder(path):
        yield from argilla_rows(path, columns)
    elif path.is_dir():
        yield from _dataset_folder(path)
    elif path.exists():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            yield from _json_lines(path)
        elif suffix == ".json":
            yield from _json(path, columns)
        elif suffix == ".parquet":
            yield from _parquet(path)
        elif suffix in (".csv", ".tsv"):
            yield from _csv(path, delimiter="\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(
                f"unknown file type {suffix!r}; use .jsonl, .json, .parquet, .csv or a datasets folder",
                source=name,
            )
    elif "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        yield from _hub(name, split)
    else:
        raise DataError("no such file or folder", source=name)


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:  # a byte-order mark, as spreadsheet tools write one, is not data
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield (
                    number,
                    DataError(
                        f"not valid UTF-8 (byte {error.start} of the line)", reason="not UTF-8"
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield (
                    number,
                    DataError(
                        f"invalid JSON: {error.msg} at column {error.colno}", reason="invalid JSON"
                    ),
                )


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 at line {line} (byte {error.start})", source=str(path)
        ) from None


def _json(path: Path, columns: dict | None = None) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(_decode(path))
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
            source=str(path),
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
    if is_label_studio(data):
        yield from label_studio_rows(data, columns)
        return
    if not isinstance(data, list):
        raise DataError(
            "a .json file must hold a list of rows (use .jsonl for one row per line)",
            source=str(path),
        )
    yield from enumerate(data, start=1)


def _csv(path: Path, delimiter: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    for number, row in enumerate(reader, start=1):
        if None in row:
            yield (
                number,
                DataError(
                    f"has {len(row) - 1 + len(row[None])} cells but the header names "
                    f"{len(reader.fieldnames)}",
                    reason="wrong cell count",
                ),
            )
            continue
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            if value == "" or value is None:
                continue
            if key in _LIST_FIELDS and value.lstrip()[:1] in ("[", "{"):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as error:
                    yield (
                        number,
                        DataError(
                            f'"{key}" holds invalid JSON: {error.msg}', reason="invalid JSON"
                        ),
                    )
                    break
            if key in _NUMBER_FIELDS:
                value = _number_or_text(value)
            parsed[key] = value
        else:
            yield number, parsed


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # the record names the field and its text


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # here, not at the top: only Parquet files need it

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read Parquet: {error}", source=str(path)) from None
    yield from enumerate(table.to_pylist(), start=1)


def _dataset_folder(path: Path) -> Iterator[tuple[int, Any]]:
    import datasets  # here, not at the top: a heavy import (docs/performance.md) only these formats need

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError or its own errors
        raise DataError(
            f"not a datasets folder saved with save_to_disk ({error})", source=str(path)
        ) from None
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    yield from enumerate(data, start=1)


def _hub(name: str, split: str) -> Iterator[tuple[int, Any]]:
    import datasets  # as in _dataset_folder

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # network, missing data set, missing split
        raise DataError(
            f"cannot load Hub data set (split {split!r}): {error}", source=name
        ) from None
    yield from enumerate(data, start=1)
