"""The built-in task: instruction following with constraints a program can check (in the spirit of
IFEval, Zhou et al. 2023). Prompts are made from templates, a topic and one or two constraints
each, deterministically from a seed; the `constraints` verifier scores an answer by the fraction
of its constraints met. Some constraint types are kept out of training altogether, to tell
whether a model learns to follow instructions or just these ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

from prefopt.evaluate.stats import bootstrap_mean
from prefopt.oracles.constraints import check_constraints, describe_constraint

TOPICS = (
    "the ocean",
    "a city at night",
    "learning to cook",
    "the moon",
    "a rainy day",
    "trains",
    "gardening",
    "a lost key",
    "winter mornings",
    "a small robot",
    "the history of bread",
    "friendship",
    "mountains",
    "a library",
    "honeybees",
    "the first day of school",
    "coffee",
    "a thunderstorm",
    "maps",
    "bicycles",
)
TASKS = (
    "Write a short note about {topic}.",
    "Describe {topic}.",
    "Tell me something interesting about {topic}.",
    "Write a few sentences about {topic}.",
    "Explain {topic} to a child.",
)
WORDS = ("light", "blue", "quiet", "river", "morning", "green", "story", "simple", "warm", "stone")
PHRASES = ("Is there anything else?", "That is all.", "Thank you for reading.")

# constraint types a model is trained on, and those it only meets at evaluation
TRAINED = (
    "lowercase",
    "max_words",
    "include_words",
    "avoid_words",
    "end_with",
    "no_commas",
    "quoted",
    "bullet_points",
    "title",
    "start_with",
)
UNSEEN = ("uppercase", "min_words", "paragraphs", "postscript")


def _constraint(kind: str, rng: random.Random) -> dict:
    parameters = {
        "max_words": lambda: {"n": rng.choice((15, 20, 30))},
        "min_words": lambda: {"n": rng.choice((40, 60))},
        "include_words": lambda: {"words": rng.sample(WORDS, 2)},
        "avoid_words": lambda: {"words": rng.sample(WORDS, 1) + ["the"]},
        "end_with": lambda: {"phrase": rng.choice(PHRASES)},
        "start_with": lambda: {"word": rng.choice(("Yes", "Today", "Imagine", "First"))},
        "bullet_points": lambda: {"n": rng.choice((2, 3, 4))},
        "paragraphs": lambda: {"n": rng.choice((2, 3))},
    }
    return {"type": kind, **parameters.get(kind, dict)()}


def make_prompts(count: int, kinds: tuple[str, ...], seed: int) -> list[dict]:
    """`count` prompts, each a task about a topic with one or two constraints of `kinds`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        chosen = rng.sample(kinds, rng.choice((1, 2)))
        constraints = [_constraint(kind, rng) for kind in chosen]
        task = rng.choice(TASKS).format(topic=rng.choice(TOPICS))
        text = " ".join([task, *(describe_constraint(c) for c in constraints)])
        rows.append({"prompt": [{"role": "user", "content": text}], "constraints": constraints})
    return rows


def write_task(
    folder: str | Path, *, train: int = 300, heldout: int = 60, unseen: int = 40, seed: int = 0
) -> dict[str, Path]:
    """The task's three prompt files: training prompts, held-out prompts of the trained constraint
    types, and held-out prompts of unseen types. Prompts never repeat across the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    files = {}
    for name, count, kinds, offset in (
        ("train", train, TRAINED, 0),
        ("heldout", heldout, TRAINED, 1),
        ("unseen", unseen, UNSEEN, 2),
    ):
        rows, attempt = [], 0
        while len(rows) < count:
            for row in make_prompts(count, kinds, seed * 101 + offset * 17 + attempt):
                key = row["prompt"][0]["content"]
                if key not in seen and len(rows) < count:
                    seen.add(key)
                    rows.append(row)
            attempt += 1
        files[name] = folder / f"task_{name}.jsonl"
        files[name].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return files


def satisfaction(rows: list[dict]) -> dict:
    """The constraints verifier's mean score (fraction of a prompt's constraints met) with its
    bootstrap interval over prompts, and the share met of each constraint type."""
    per_prompt, by_type = [], {}
    for row in rows:
        checks = check_constraints(row["prompt"], row["completions"][0], row)
        per_prompt.append([sum(checks.values()) / len(checks)])
        for name, met in checks.items():
            by_type.setdefault(name.split("#")[0], []).append(met)
    return {
        "score": bootstrap_mean(per_prompt).to_json(),
        "by_type": {kind: sum(met) / len(met) for kind, met in sorted(by_type.items())},
        "prompts": len(rows),
    }
