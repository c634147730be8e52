"""The layouts of the preference data sets people download, recognised by their fields and turned
into prefopt's own (`prompt` with `chosen`/`rejected`, or `completions` with `scores`/`ranks`),
and a column mapping for any other table. One function per layout; each names the field it
misses, and the loader says which layout it recognised."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefopt.data.records import DataError

# fields of prefopt's own layout and of the layouts below, which a column mapping may name
STANDARD_FIELDS = (
    "prompt",
    "chosen",
    "rejected",
    "completions",
    "scores",
    "ranks",
    "completion",
    "score",
)
LAYOUT_FIELDS = (
    "answers",
    "history",
    "human_ref_A",
    "human_ref_B",
    "labels",
    "response_0",
    "response_1",
    "better_response_id",
    "instruction",
    "response",
    "helpfulness",
)
_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _hh_rlhf(row: dict) -> dict:
    """Anthropic HH-RLHF: `chosen` and `rejected` are whole "\\n\\nHuman: … \\n\\nAssistant: …"
    transcripts; the prompt is their shared beginning, up to and including the last
    "\\n\\nAssistant:" in it."""
    chosen, rejected = row["chosen"], row["rejected"]
    shared = _common_prefix(chosen, rejected)
    cut = chosen.rfind(_ASSISTANT, 0, len(shared) + 1)
    if cut < 0:
        raise DataError(
            '"chosen" and "rejected" share no "\\n\\nAssistant:" turn to answer',
            reason="bad transcript",
        )
    cut += len(_ASSISTANT)
    return {
        **_rest(row, ("chosen", "rejected")),
        "prompt": chosen[:cut],
        "chosen": chosen[cut:],
        "rejected": rejected[cut:],
    }


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _implicit_text_prompt(row: dict) -> dict:
    """Plain-text pairs without a prompt: the prompt is the shared beginning, as TRL's
    extract_prompt takes it (a space before the answers goes with them)."""
    chosen, rejected = row["chosen"], row["rejected"]
    n = len(_common_prefix(chosen, rejected))
    if n and chosen[n - 1] == " ":
        n -= 1
    if n == 0:
        raise DataError(
            'missing field "prompt", and "chosen" and "rejected" share no beginning',
            reason='missing "prompt"',
        )
    return {
        **_rest(row, ("chosen", "rejected")),
        "prompt": chosen[:n],
        "chosen": chosen[n:],
        "rejected": rejected[n:],
    }


def _nectar(row: dict) -> dict:
    """Nectar: `answers: [{answer, rank, model}]`, seven ranked answers (1 = best)."""
    answers = row["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise DataError('"answers" must be a list of {"answer", "rank"}', reason="wrong type")
    for i, answer in enumerate(answers):
        for field in ("answer", "rank"):
            if field not in answer:
                raise DataError(f'"answers"[{i}] needs "{field}"', reason=f'missing "{field}"')
    return {
        **_rest(row, ("answers",)),
        "completions": [a["answer"] for a in answers],
        "ranks": [a["rank"] for a in answers],
    }


def _shp(row: dict) -> dict:
    """Stanford SHP: `history`, `human_ref_A`, `human_ref_B`, `labels` (1: A is preferred)."""
    label = row["labels"]
    if label not in (0, 1) or isinstance(label, bool):
        raise DataError(
            f'"labels" must be 1 (A preferred) or 0 (B preferred), got {label!r}',
            reason="wrong type",
        )
    better, worse = ("human_ref_A", "human_ref_B") if label == 1 else ("human_ref_B", "human_ref_A")
    return {
        **_rest(row, ("history", "human_ref_A", "human_ref_B", "labels")),
        "prompt": row["history"],
        "chosen": row[better],
        "rejected": row[worse],
    }


def _pku_safe_rlhf(row: dict) -> dict:
    """PKU-SafeRLHF: `response_0`, `response_1` and `better_response_id` (0 or 1). Map
    `better_response_id` to `safer_response_id` with `columns` to train on safety instead."""
    better = row["better_response_id"]
    if better not in (0, 1) or isinstance(better, bool):
        raise DataError(f'"better_response_id" must be 0 or 1, got {better!r}', reason="wrong type")
    return {
        **_rest(row, ("response_0", "response_1", "better_response_id")),
        "prompt": row["prompt"],
        "chosen": row[f"response_{better}"],
        "rejected": row[f"response_{1 - better}"],
    }


def _ultrafeedback_raw(row: dict) -> dict:
    """Raw UltraFeedback: `instruction`, `completions: [{response, overall_score, annotations…}]`."""
    return {**_rest(row, ("instruction",)), "prompt": row["instruction"]}


# name -> (does a row have this layout?, turn it into prefopt's own); the first that matches wins
LAYOUTS: dict[str, tuple[Callable[[dict], bool], Callable[[dict], dict]]] = {
    "hh-rlhf": (
        lambda r: (
            "prompt" not in r
            and isinstance(r.get("chosen"), str)
            and isinstance(r.get("rejected"), str)
            and _ASSISTANT in r["chosen"]
            and _HUMAN in r["chosen"]
        ),
        _hh_rlhf,
    ),
    "implicit-prompt text pairs": (
        lambda r: (
            "prompt" not in r
            and isinstance(r.get("chosen"), str)
            and isinstance(r.get("rejected"), str)
        ),
        _implicit_text_prompt,
    ),
    "nectar": (lambda r: "answers" in r and "prompt" in r and "completions" not in r, _nectar),
    "shp": (lambda r: {"human_ref_A", "human_ref_B", "labels"} <= r.keys(), _shp),
    "pku-saferlhf": (
        lambda r: {"response_0", "response_1", "better_response_id"} <= r.keys(),
        _pku_safe_rlhf,
    ),
    "ultrafeedback": (
        lambda r: "instruction" in r and "completions" in r and "prompt" not in r,
        _ultrafeedback_raw,
    ),
}
# one response per row, grouped into lists by prompt (HelpSteer2; or any table mapped to `completion`)
GROUPED = {"helpsteer2": ("response", "helpfulness")}


def _rest(row: dict, used: tuple[str, ...]) -> dict:
    return {key: value for key, value in row.items() if key not in used}


def apply_columns(row: Any, columns: Mapping[str, str] | None) -> Any:
    """Rename a table's fields to prefopt's: `columns` maps a standard field to the table's name
    for it ({"prompt": "question", "chosen": "good", "rejected": "bad"})."""
    if not columns or not isinstance(row, dict):
        return row
    missing = [f'"{theirs}" (for {ours})' for ours, theirs in columns.items() if theirs not in row]
    if missing:
        raise DataError(
            f"missing field {', '.join(missing)} named in columns", reason="missing mapped field"
        )
    renamed = {ours: row[theirs] for ours, theirs in columns.items()}
    return {**{k: v for k, v in row.items() if k not in columns.values()}, **renamed}


def recognise(row: Any) -> tuple[str, Any]:
    """(layout name, the row in prefopt's layout); rows already in it are "prefopt"."""
    if isinstance(row, dict):
        for name, (matches, convert) in LAYOUTS.items():
            if matches(row):
                return name, convert(row)
    return "prefopt", row


def grouped_layout(row: Any) -> tuple[str, str] | None:
    """(text field, score field) when a row holds one response of a list to be grouped by prompt."""
    if not isinstance(row, dict) or "prompt" not in row:
        return None
    if "completion" in row and "score" in row:
        return "completion", "score"
    for text, score in GROUPED.values():
        if text in row and score in row and "completions" not in row:
            return text, score
    return None


def check_columns(columns: Mapping[str, str] | None) -> None:
    for ours in columns or {}:
        if ours not in STANDARD_FIELDS + LAYOUT_FIELDS:
            raise DataError(
                f"columns: {ours!r} is not one of prefopt's fields ({', '.join(STANDARD_FIELDS)}) "
                "or of a known layout's"
            )
