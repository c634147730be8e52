"""One record type for every preference format: a prompt and K completions with scores (a pair is
K = 2 with scores (1, 0); an edit is the pair edited ≻ original; a single answer with a verdict,
thumbs up or down, is K = 1 with score 1 or 0, and one with a rating is K = 1 with the rating).
`parse_row` turns one row of any supported format into a record or raises a DataError that names
the field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

Message = dict[str, str]
CHAT_ROLES = ("system", "user", "assistant", "tool")
Text = str | list[Message]  # a plain string, or chat messages [{"role", "content"}, ...]


class DataError(ValueError):
    """Bad input, with where it came from: `data/train.jsonl, row 17: "chosen" is empty`."""

    def __init__(
        self, message: str, *, source: str = "", row: int | None = None, reason: str | None = None
    ):
        self.detail, self.source, self.row = message, source, row
        self.reason = reason or message
        where = ", ".join(
            part for part in (source, f"row {row}" if row is not None else "") if part
        )
        super().__init__(f"{where}: {message}" if where else message)


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    prompt: Text
    completions: tuple[Text, ...]  # each a string or the assistant turn(s) that follow the prompt
    scores: tuple[float, ...]  # higher is better
    source: str = ""  # "file, row N", for messages later on
    # "list" (K >= 2 compared answers), or one answer with a "label" (score 1 good, 0 bad) or a
    # "rating" (the score), or one "answer" to be judged; data/feedback.py turns each into what
    # an objective trains on
    kind: str = "list"
    # the row's other fields (a verifier's constraints or tests, generation metadata), kept as they were
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (the last user turn for chat), for splitting and display."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m["content"] for m in self.prompt)


def parse_row(
    row: Any,
    *,
    require_completions: bool = True,
    require_scores: bool = True,
    min_completions: int = 2,
) -> PreferenceRecord:
    """Read one row: pairwise {prompt?, chosen, rejected}, ranked/scored {prompt, completions,
    scores | ranks}, UltraFeedback-style {prompt, completions: [{text|response, score}]}, or
    prompt-only {prompt} when `require_completions` is False. With `require_scores` False,
    {prompt, completions} without scores is read too (all scores 0: items to be labelled)."""
    if not isinstance(row, dict):
        raise DataError(
            f"expected an object with fields, got {type(row).__name__}", reason="not an object"
        )
    if "completion" in row and ("label" in row or "rating" in row or "edited" in row):
        record = _single(row)
    elif "chosen" in row or "rejected" in row:
        record = _pair(row)
    elif "completions" in row:
        record = _ranked(row, require_scores, min_completions)
    elif "completion" in row and not require_scores:  # one answer to be judged (the label app)
        prompt = _prompt(row)
        completion = _text(row["completion"], "completion", empty_ok=isinstance(prompt, list))
        record = PreferenceRecord(prompt, (completion,), (0.0,), kind="answer")
    elif require_completions:
        fields = ", ".join(sorted(map(str, row))) or "none"
        raise DataError(
            f'missing completions: give "chosen" and "rejected", or "completions" with "scores" or '
            f'"ranks" (fields present: {fields})',
            reason="missing completions",
        )
    else:
        record = PreferenceRecord(prompt=_prompt(row), completions=(), scores=())
    extra = {key: value for key, value in row.items() if key not in _READ_FIELDS}
    return dataclasses.replace(record, extra=extra) if extra else record


_READ_FIELDS = frozenset(
    {"prompt", "chosen", "rejected", "completions", "scores", "ranks", "completion"}
    | {"label", "rating", "edited"}
)
_LABELS = {"true": True, "false": False, "1": True, "0": False, "up": True, "down": False}


def _single(row: dict) -> PreferenceRecord:
    """One answer with feedback: `label` (true: good), `rating` (a number, higher is better) or
    `edited` (the answer as someone corrected it: the pair edited ≻ original)."""
    given = [field for field in ("label", "rating", "edited") if field in row]
    if len(given) > 1:
        raise DataError(
            'give one of "label", "rating" or "edited", not '
            + " and ".join(f'"{field}"' for field in given),
            reason="several kinds of feedback",
        )
    prompt = _prompt(row)
    completion = _text(row["completion"], "completion", empty_ok=isinstance(prompt, list))
    if given == ["edited"]:
        edited = _text(row["edited"], "edited", empty_ok=isinstance(prompt, list))
        if edited == completion:
            raise DataError('"edited" is the same as "completion"', reason="identical completions")
        return PreferenceRecord(prompt=prompt, completions=(edited, completion), scores=(1.0, 0.0))
    if given == ["label"]:
        return PreferenceRecord(
            prompt, (completion,), (1.0 if label_value(row["label"]) else 0.0,), kind="label"
        )
    return PreferenceRecord(
        prompt, (completion,), (_number(row["rating"], '"rating"'),), kind="rating"
    )


def label_value(value: Any) -> bool:
    """A verdict as tools write it: true/false, 1/0, or the words up/down (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise DataError(
        f'"label" must be true (a good answer) or false (a bad one), got {value!r}',
        reason="wrong type",
    )


def _pair(row: dict) -> PreferenceRecord:
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError(f'missing field "{field}"', reason=f'missing "{field}"')
    chosen, rejected = _text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _prompt(row)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
    else:
        raise DataError(
            'missing field "prompt" (an implicit prompt needs "chosen" and "rejected" as chat '
            "messages that share the conversation up to the answer)",
            reason='missing "prompt"',
        )
    return _record(prompt, (chosen, rejected), (1.0, 0.0), ('"chosen"', '"rejected"'))


def _ranked(row: dict, require_scores: bool = True, min_completions: int = 2) -> PreferenceRecord:
    prompt = _prompt(row)
    items = row["completions"]
    if not isinstance(items, list):
        raise DataError(
            f'"completions" must be a list, got {type(items).__name__}', reason="wrong type"
        )
    if items and all(
        isinstance(item, dict) and "role" not in item for item in items
    ):  # UltraFeedback style
        completions, scores = [], []
        for i, item in enumerate(items):
            key = "text" if "text" in item else "response" if "response" in item else None
            if key is None:
                raise DataError(
                    f'"completions"[{i}] needs a "text" or "response" field', reason="missing text"
                )
            completions.append(item[key])
            scores.append(item.get("score", item.get("overall_score")))
            if scores[-1] is None:
                raise DataError(f'"completions"[{i}] needs a "score"', reason="missing score")
    else:
        completions = items
        unscored = not require_scores and "scores" not in row and "ranks" not in row
        scores = [0.0] * len(items) if unscored else _scores_field(row, len(items))
    names = tuple(f'"completions"[{i}]' for i in range(len(completions)))
    # an empty answer to a chat prompt is an answer (the model ended its turn at once; the template
    # still gives it tokens); in plain text it would have no token to score
    texts = tuple(
        _text(c, name, empty_ok=isinstance(prompt, list))
        for c, name in zip(completions, names, strict=True)
    )
    return _record(
        prompt,
        texts,
        tuple(_number(s, f'"scores"[{i}]') for i, s in enumerate(scores)),
        names,
        allow_ties=not require_scores,
        min_completions=min_completions,
    )


def _scores_field(row: dict, count: int) -> list:
    if "scores" in row and "ranks" in row:
        raise DataError('give "scores" or "ranks", not both', reason="scores and ranks")
    if "scores" not in row and "ranks" not in row:
        raise DataError(
            'missing field "scores" (or "ranks", 1 = best) for "completions"',
            reason='missing "scores"',
        )
    field = "scores" if "scores" in row else "ranks"
    values = row[field]
    if not isinstance(values, list):
        raise DataError(
            f'"{field}" must be a list of numbers, got {type(values).__name__}', reason="wrong type"
        )
    if len(values) != count:
        raise DataError(
            f'"completions" has {count} items but "{field}" has {len(values)}',
            reason="length mismatch",
        )
    numbers = [_number(v, f'"{field}"[{i}]') for i, v in enumerate(values)]
    if field == "ranks":
        for i, rank in enumerate(numbers):
            if rank < 1 or rank != int(rank):
                raise DataError(
                    f'"ranks"[{i}] must be a positive integer (1 = best), got {values[i]!r}',
                    reason="bad rank",
                )
        return [-rank for rank in numbers]
    return numbers


def _record(
    prompt: Text,
    completions: tuple,
    scores: tuple,
    names: tuple,
    allow_ties: bool = False,
    min_completions: int = 2,
) -> PreferenceRecord:
    if len(completions) < min_completions:
        raise DataError(
            f"needs at least {'two completions' if min_completions == 2 else min_completions}, got "
            f"{len(completions)}",
            reason="too few completions",
        )
    seen: dict[str, str] = {}
    for completion, name in zip(completions, names, strict=True):
        key = repr(completion)
        if (
            key in seen and not allow_ties
        ):  # unscored lists are samples, and a policy can repeat itself
            raise DataError(f"{name} is identical to {seen[key]}", reason="identical completions")
        seen[key] = name
    if len(set(scores)) == 1 and not allow_ties:
        raise DataError(
            f"all scores are tied ({scores[0]}), so there is nothing to prefer",
            reason="all scores tied",
        )
    return PreferenceRecord(prompt=prompt, completions=completions, scores=scores)


def _prompt(row: dict) -> Text:
    if "prompt" not in row or row["prompt"] is None:
        raise DataError('missing field "prompt"', reason='missing "prompt"')
    prompt = _text(row["prompt"], "prompt")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise DataError('"prompt" must not end with an assistant turn', reason="bad messages")
    return prompt


def _utf8(text: str, label: str) -> None:
    """Text that UTF-8 cannot hold (a lone surrogate, which JSON's \\ud800 escapes can make) breaks
    tokenizers, pages and files later: refused where it is read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(
            f"{label} is not valid text: a lone surrogate {text[error.start]!r} at character "
            f"{error.start} (UTF-8 cannot hold it)",
            reason="invalid text",
        ) from None


def _text(value: Any, name: str, empty_ok: bool = False) -> Text:
    label = name if name.startswith('"') else f'"{name}"'
    if isinstance(value, str):
        if not value.strip() and not empty_ok:
            raise DataError(f"{label} is empty", reason="empty text")
        _utf8(value, label)
        return value
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise DataError(
                    f'{label}[{i}] must be a message {{"role", "content"}}', reason="bad messages"
                )
            if message["role"] not in CHAT_ROLES:
                raise DataError(
                    f'{label}[{i}]["role"] is {message["role"]!r}; chat templates know '
                    f"{', '.join(CHAT_ROLES)}",
                    reason="unknown role",
                )
            content = message.get("content")
            if not isinstance(content, str):
                raise DataError(
                    f'{label}[{i}]["content"] must be a string, got {type(content).__name__}',
                    reason="wrong type",
                )
            if not content.strip():
                raise DataError(f'{label}[{i}]["content"] is empty', reason="empty text")
            _utf8(content, f'{label}[{i}]["content"]')
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if isinstance(value, list):
        raise DataError(f"{label} is an empty list", reason="empty text")
    raise DataError(
        f"{label} must be a string or a list of chat messages, got {type(value).__name__}",
        reason="wrong type",
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{name} must be a finite number, got {value!r}", reason="wrong type")
    return float(value)


def _split_shared_prefix(chosen: list[Message], rejected: list[Message]) -> tuple[list, list, list]:
    """The conversation both share up to the first differing turn is the prompt."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(
            'missing field "prompt", and "chosen" and "rejected" share no conversation prefix',
            reason='missing "prompt"',
        )
    if shared == len(chosen) or shared == len(rejected):
        raise DataError(
            '"chosen" and "rejected" are identical after their shared prompt',
            reason="identical completions",
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]
