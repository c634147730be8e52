"""Write the example preference data: examples/data/lists.jsonl (ranked lists of 4),
examples/data/pairs.jsonl (pairs) and examples/data/thumbs.jsonl (one answer a prompt with a thumbs
up or down), from hand-written facts and formatting constraints.

Each prompt asks a factual question with one formatting constraint. The four completions, best
first: the right answer following the constraint; the right answer ignoring it; an evasive
answer following it; a wrong answer ignoring it. Deterministic: rerunning gives the same files.

    python examples/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FACTS = [
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
        "The capital of France is Lyon.",
    ),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    (
        "What gas do plants absorb from the air?",
        "Plants absorb carbon dioxide from the air.",
        "Plants absorb helium from the air.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
        "Water boils at 50 degrees Celsius at sea level.",
    ),
    (
        "Who wrote Romeo and Juliet?",
        "William Shakespeare wrote Romeo and Juliet.",
        "Charles Dickens wrote Romeo and Juliet.",
    ),
    (
        "What is the largest planet in our solar system?",
        "Jupiter is the largest planet in our solar system.",
        "Mars is the largest planet in our solar system.",
    ),
    ("How many days are in a leap year?", "A leap year has 366 days.", "A leap year has 360 days."),
    (
        "What is the chemical symbol for gold?",
        "The chemical symbol for gold is Au.",
        "The chemical symbol for gold is Gd.",
    ),
    (
        "Which ocean is the largest?",
        "The Pacific Ocean is the largest ocean.",
        "The Indian Ocean is the largest ocean.",
    ),
    (
        "What is the freezing point of water?",
        "Water freezes at 0 degrees Celsius.",
        "Water freezes at 20 degrees Celsius.",
    ),
    (
        "How many continents are there?",
        "There are seven continents.",
        "There are twelve continents.",
    ),
    (
        "What is the square root of 81?",
        "The square root of 81 is 9.",
        "The square root of 81 is 7.",
    ),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
        "The rabbit is known as the king of the jungle.",
    ),
    (
        "What colour do you get by mixing blue and yellow?",
        "Mixing blue and yellow gives green.",
        "Mixing blue and yellow gives purple.",
    ),
    (
        "How many minutes are in an hour?",
        "There are 60 minutes in an hour.",
        "There are 100 minutes in an hour.",
    ),
    (
        "What is the tallest mountain on Earth?",
        "Mount Everest is the tallest mountain on Earth.",
        "Mount Fuji is the tallest mountain on Earth.",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars is known as the Red Planet.",
        "Venus is known as the Red Planet.",
    ),
    ("What do bees make?", "Bees make honey.", "Bees make milk."),
    (
        "What is the main language spoken in Brazil?",
        "The main language spoken in Brazil is Portuguese.",
        "The main language spoken in Brazil is French.",
    ),
    (
        "How many sides does a hexagon have?",
        "A hexagon has six sides.",
        "A hexagon has eight sides.",
    ),
    (
        "What is the fastest land animal?",
        "The cheetah is the fastest land animal.",
        "The tortoise is the fastest land animal.",
    ),
    (
        "What is H2O commonly called?",
        "H2O is commonly called water.",
        "H2O is commonly called salt.",
    ),
    (
        "Who painted the Mona Lisa?",
        "Leonardo da Vinci painted the Mona Lisa.",
        "Pablo Picasso painted the Mona Lisa.",
    ),
    (
        "What is the capital of Japan?",
        "The capital of Japan is Tokyo.",
        "The capital of Japan is Osaka.",
    ),
    (
        "How many hours are in a day?",
        "There are 24 hours in a day.",
        "There are 12 hours in a day.",
    ),
    (
        "What is the closest star to Earth?",
        "The Sun is the closest star to Earth.",
        "Sirius is the closest star to Earth.",
    ),
    (
        "What is the smallest prime number?",
        "The smallest prime number is 2.",
        "The smallest prime number is 9.",
    ),
    (
        "Which organ pumps blood through the body?",
        "The heart pumps blood through the body.",
        "The liver pumps blood through the body.",
    ),
    (
        "What is the capital of Italy?",
        "The capital of Italy is Rome.",
        "The capital of Italy is Milan.",
    ),
    (
        "How many strings does a standard guitar have?",
        "A standard guitar has six strings.",
        "A standard guitar has ten strings.",
    ),
    (
        "What is frozen water called?",
        "Frozen water is called ice.",
        "Frozen water is called steam.",
    ),
    (
        "Which bird is a symbol of peace?",
        "The dove is a symbol of peace.",
        "The crow is a symbol of peace.",
    ),
    ("What is 12 times 12?", "12 times 12 is 144.", "12 times 12 is 124."),
    (
        "What is the capital of Canada?",
        "The capital of Canada is Ottawa.",
        "The capital of Canada is Toronto.",
    ),
    (
        "How many players are on a soccer team on the field?",
        "A soccer team has eleven players on the field.",
        "A soccer team has five players on the field.",
    ),
    (
        "What is the hardest natural substance?",
        "Diamond is the hardest natural substance.",
        "Chalk is the hardest natural substance.",
    ),
    (
        "Which season comes after winter?",
        "Spring comes after winter.",
        "Autumn comes after winter.",
    ),
    (
        "What do caterpillars turn into?",
        "Caterpillars turn into butterflies or moths.",
        "Caterpillars turn into frogs.",
    ),
    (
        "What is the largest mammal?",
        "The blue whale is the largest mammal.",
        "The horse is the largest mammal.",
    ),
    (
        "How many weeks are in a year?",
        "There are 52 weeks in a year.",
        "There are 40 weeks in a year.",
    ),
    (
        "What is the capital of Egypt?",
        "The capital of Egypt is Cairo.",
        "The capital of Egypt is Dubai.",
    ),
    ("What instrument has 88 keys?", "The piano has 88 keys.", "The violin has 88 keys."),
    (
        "Which metal is liquid at room temperature?",
        "Mercury is liquid at room temperature.",
        "Iron is liquid at room temperature.",
    ),
    (
        "What is the longest river in Africa?",
        "The Nile is the longest river in Africa.",
        "The Thames is the longest river in Africa.",
    ),
    (
        "How many bones are in the adult human body?",
        "The adult human body has 206 bones.",
        "The adult human body has 50 bones.",
    ),
    ("What shape has three sides?", "A triangle has three sides.", "A circle has three sides."),
    (
        "What is the capital of Germany?",
        "The capital of Germany is Berlin.",
        "The capital of Germany is Vienna.",
    ),
    (
        "Which planet has prominent rings?",
        "Saturn has prominent rings.",
        "Mercury has prominent rings.",
    ),
    (
        "What vitamin does sunlight help the body make?",
        "Sunlight helps the body make vitamin D.",
        "Sunlight helps the body make vitamin Z.",
    ),
    (
        "How many cents are in a dollar?",
        "There are 100 cents in a dollar.",
        "There are 10 cents in a dollar.",
    ),
    (
        "What is the opposite of hot?",
        "The opposite of hot is cold.",
        "The opposite of hot is loud.",
    ),
    (
        "What is the capital of Spain?",
        "The capital of Spain is Madrid.",
        "The capital of Spain is Lisbon.",
    ),
    ("Which animal has a trunk?", "The elephant has a trunk.", "The giraffe has a trunk."),
    ("What is 15 plus 27?", "15 plus 27 is 42.", "15 plus 27 is 32."),
    (
        "What force keeps us on the ground?",
        "Gravity keeps us on the ground.",
        "Magnetism keeps us on the ground.",
    ),
    (
        "What is the capital of Australia?",
        "The capital of Australia is Canberra.",
        "The capital of Australia is Sydney.",
    ),
    ("How many months have 31 days?", "Seven months have 31 days.", "Two months have 31 days."),
    (
        "What do you call a baby dog?",
        "A baby dog is called a puppy.",
        "A baby dog is called a kitten.",
    ),
    (
        "Which gas do humans need to breathe?",
        "Humans need oxygen to breathe.",
        "Humans need neon to breathe.",
    ),
    (
        "What is the largest desert in the world?",
        "Antarctica is the largest desert in the world.",
        "The Gobi is the largest desert in the world.",
    ),
]

EVASIVE = "I am not sure about that."
ENDING = "Is there anything else?"


def _words(text: str) -> list[str]:
    return text.replace(",", "").split()


CONSTRAINTS = {
    # name: (instruction, apply to an answer)
    "lowercase": ("Answer in all lowercase letters.", lambda a: a.lower()),
    "uppercase": ("Answer in all capital letters.", lambda a: a.upper()),
    "ending": (f'End your answer with the exact phrase "{ENDING}"', lambda a: f"{a} {ENDING}"),
    "quotes": ("Wrap your whole answer in double quotes.", lambda a: f'"{a}"'),
    "prefix": ('Start your answer with "Answer:".', lambda a: f"Answer: {a}"),
    "json": ('Reply in JSON as {"answer": "..."}.', lambda a: json.dumps({"answer": a})),
    "bullets": ("Answer as a bulleted list with one bullet.", lambda a: f"- {a}"),
    "brief": (
        "Answer in at most five words.",
        lambda a: " ".join(_words(a)[-5:]).rstrip(".") + ".",
    ),
}


def ranked_lists(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(CONSTRAINTS)
    rows = []
    for question, right, wrong in FACTS:
        changes_both = [
            n
            for n in names
            if CONSTRAINTS[n][1](right) != right and CONSTRAINTS[n][1](EVASIVE) != EVASIVE
        ]
        for name in rng.sample(changes_both, 2):
            instruction, apply = CONSTRAINTS[name]
            completions = [apply(right), right, apply(EVASIVE), f"{wrong} It is a well known fact."]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": f"{question} {instruction}"}],
                    "completions": completions,
                    "scores": [3, 2, 1, 0],
                    "constraint": name,
                }
            )
    return rows


def pairs(lists: list[dict]) -> list[dict]:
    """The best completion against each of the three others in turn."""
    return [
        {
            "prompt": row["prompt"],
            "chosen": row["completions"][0],
            "rejected": row["completions"][1 + i % 3],
        }
        for i, row in enumerate(lists)
    ]


def thumbs(lists: list[dict]) -> list[dict]:
    """One answer to each prompt with a verdict, as a deployed model collects them: every other
    prompt its best answer (up), the rest one of the three others (down)."""
    return [
        {
            "prompt": row["prompt"],
            "completion": row["completions"][0 if i % 2 == 0 else 1 + (i // 2) % 3],
            "label": i % 2 == 0,
        }
        for i, row in enumerate(lists)
    ]


def main() -> None:
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)
    lists = ranked_lists()
    for name, rows in (
        ("lists.jsonl", lists),
        ("pairs.jsonl", pairs(lists)),
        ("thumbs.jsonl", thumbs(lists)),
    ):
        (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {len(rows)} rows to {out / name}")


if __name__ == "__main__":
    main()
