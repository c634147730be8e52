"""Instruction-following constraints that a program can check (in the spirit of IFEval, Zhou et
al. 2023), written small and deterministic: no downloads, no language detection. A record names
its constraints as `{"constraints": [{"type": "max_words", "n": 40}, {"type": "lowercase"}]}`;
`check_constraints` is the built-in `constraints` verifier: one named check per constraint, the
score being the fraction met."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _has_word(text: str, word: str) -> bool:
    return (
        re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, flags=re.IGNORECASE)
        is not None
    )


def _paragraphs(text: str) -> list[str]:
    return [part for part in re.split(r"\n\s*\n", text.strip()) if part.strip()]


def _bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\s*[*-]\s+\S", line)]


def _json_object(text: str) -> Any:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.S)
    try:
        return json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError:
        return None


def _first_word(text: str) -> str:
    found = words(text)
    return found[0].lower() if found else ""


# type -> (check(text, constraint) -> bool, how a prompt asks for it)
CHECKS: dict[str, tuple[Callable[[str, dict], bool], Callable[[dict], str]]] = {
    "lowercase": (
        lambda t, c: any(ch.isalpha() for ch in t) and t == t.lower(),
        lambda c: "Write your whole answer in lowercase letters, with no capital letters at all.",
    ),
    "uppercase": (
        lambda t, c: any(ch.isalpha() for ch in t) and t == t.upper(),
        lambda c: "Write your whole answer in capital letters.",
    ),
    "max_words": (
        lambda t, c: 0 < len(words(t)) <= c["n"],
        lambda c: f"Answer in at most {c['n']} words.",
    ),
    "min_words": (
        lambda t, c: len(words(t)) >= c["n"],
        lambda c: f"Answer in at least {c['n']} words.",
    ),
    "include_words": (
        lambda t, c: all(_has_word(t, w) for w in c["words"]),
        lambda c: "Include the words " + ", ".join(f'"{w}"' for w in c["words"]) + ".",
    ),
    "avoid_words": (
        lambda t, c: bool(t.strip()) and not any(_has_word(t, w) for w in c["words"]),
        lambda c: "Do not use the words " + ", ".join(f'"{w}"' for w in c["words"]) + ".",
    ),
    "end_with": (
        lambda t, c: t.rstrip().endswith(c["phrase"]),
        lambda c: f'End your answer with the exact phrase "{c["phrase"]}"',
    ),
    "start_with": (
        lambda t, c: _first_word(t) == c["word"].lower(),
        lambda c: f'Start your answer with the word "{c["word"]}".',
    ),
    "no_commas": (
        lambda t, c: bool(t.strip()) and "," not in t,
        lambda c: "Do not use any commas.",
    ),
    "quoted": (
        lambda t, c: len(t.strip()) > 1 and t.strip()[0] == '"' and t.strip()[-1] == '"',
        lambda c: "Wrap your whole answer in double quotation marks.",
    ),
    "bullet_points": (
        lambda t, c: len(_bullets(t)) == c["n"],
        lambda c: f'Answer with exactly {c["n"]} bullet points, each a line starting with "* ".',
    ),
    "title": (
        lambda t, c: re.search(r"<<[^<>\n]+>>", t) is not None,
        lambda c: "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
    ),
    "json": (
        lambda t, c: (
            isinstance(obj := _json_object(t), dict) and all(k in obj for k in c.get("keys", []))
        ),
        lambda c: (
            "Answer with a JSON object only"
            + (" with the keys " + ", ".join(f'"{k}"' for k in c["keys"]) if c.get("keys") else "")
            + "."
        ),
    ),
    "paragraphs": (
        lambda t, c: len(_paragraphs(t)) == c["n"],
        lambda c: f"Write exactly {c['n']} paragraphs, separated by blank lines.",
    ),
    "postscript": (
        lambda t, c: re.search(r"^\s*P\.S\.", t, flags=re.M) is not None,
        lambda c: "End with a postscript starting with P.S.",
    ),
    "placeholders": (
        lambda t, c: len(re.findall(r"\[[^\[\]\n]+\]", t)) >= c["n"],
        lambda c: f"Include at least {c['n']} placeholders in square brackets, like [name].",
    ),
}
_REQUIRED = {
    "max_words": ("n",),
    "min_words": ("n",),
    "include_words": ("words",),
    "avoid_words": ("words",),
    "end_with": ("phrase",),
    "start_with": ("word",),
    "bullet_points": ("n",),
    "paragraphs": ("n",),
    "placeholders": ("n",),
}


def describe_constraint(constraint: dict) -> str:
    """The instruction a prompt gives for this constraint."""
    return CHECKS[_checked(constraint)][1](constraint)


def _checked(constraint: Any) -> str:
    if not isinstance(constraint, dict) or constraint.get("type") not in CHECKS:
        kind = constraint.get("type") if isinstance(constraint, dict) else constraint
        raise ValueError(f"unknown constraint {kind!r}; known: {', '.join(sorted(CHECKS))}")
    missing = [key for key in _REQUIRED.get(constraint["type"], ()) if key not in constraint]
    if missing:
        raise ValueError(f"constraint {constraint['type']} needs {', '.join(missing)}")
    return constraint["type"]


def check_constraints(prompt: Any, completion: str, record: dict) -> dict[str, bool]:
    """The `constraints` verifier: {"<type>" (or "<type>#2" for a second of a type): met?}."""
    constraints = record.get("constraints")
    if not isinstance(constraints, list) or not constraints:
        raise ValueError('the record has no "constraints" list')
    checks: dict[str, bool] = {}
    for constraint in constraints:
        kind = _checked(constraint)
        name, n = kind, 2
        while name in checks:
            name, n = f"{kind}#{n}", n + 1
        checks[name] = bool(CHECKS[kind][0](completion, constraint))
    return checks
