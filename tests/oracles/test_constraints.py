"""Each instruction-following check on answers that meet it and answers that do not."""

import pytest

from prefopt.oracles.constraints import CHECKS, check_constraints, describe_constraint

CASES = [  # (constraint, an answer that meets it, one that does not)
    ({"type": "lowercase"}, "all lower case here.", "Not lower."),
    ({"type": "uppercase"}, "ALL CAPS HERE!", "ALL CAPS but one"),
    ({"type": "max_words", "n": 3}, "one two three", "one two three four"),
    ({"type": "min_words", "n": 3}, "one two three", "one two"),
    (
        {"type": "include_words", "words": ["river", "Stone"]},
        "A stone by the River.",
        "A stone by the riverbank.",
    ),
    ({"type": "avoid_words", "words": ["bad"]}, "badge is fine", "that is Bad."),
    (
        {"type": "end_with", "phrase": "Is there anything else?"},
        "Done. Is there anything else?  ",
        "Is there anything else? Done.",
    ),
    ({"type": "start_with", "word": "Yes"}, '"yes," she said', "Well, yes"),
    ({"type": "no_commas"}, "no commas at all", "one, two"),
    ({"type": "quoted"}, ' "wrapped" ', '"only at the start'),
    ({"type": "bullet_points", "n": 2}, "* one\n- two", "* one\n* two\n* three"),
    ({"type": "title"}, "<<A Title>>\nbody", "<A Title>\nbody"),
    ({"type": "json", "keys": ["name"]}, '```json\n{"name": "x", "age": 3}\n```', '{"age": 3}'),
    ({"type": "paragraphs", "n": 2}, "first\n\n  \nsecond", "first\nstill first"),
    ({"type": "postscript"}, "Body.\nP.S. more", "Body. PS more"),
    ({"type": "placeholders", "n": 2}, "Dear [name], at [address]", "Dear [name]"),
]


def test_every_check_has_a_case():
    assert {case[0]["type"] for case in CASES} == set(CHECKS)


@pytest.mark.parametrize("constraint, meets, fails", CASES, ids=[case[0]["type"] for case in CASES])
def test_a_check_tells_an_answer_that_meets_it_from_one_that_does_not(constraint, meets, fails):
    record = {"constraints": [constraint]}
    assert check_constraints("p", meets, record) == {constraint["type"]: True}
    assert check_constraints("p", fails, record) == {constraint["type"]: False}
    assert describe_constraint(constraint)  # every constraint can be asked for in words


def test_several_constraints_are_named_and_counted_apart():
    record = {
        "constraints": [
            {"type": "no_commas"},
            {"type": "max_words", "n": 2},
            {"type": "max_words", "n": 9},
        ]
    }
    assert check_constraints("p", "three short words", record) == {
        "no_commas": True,
        "max_words": False,
        "max_words#2": True,
    }


@pytest.mark.parametrize(
    "record, message",
    [
        ({}, 'no "constraints" list'),
        ({"constraints": [{"type": "rhyme"}]}, "unknown constraint 'rhyme'"),
        ({"constraints": [{"type": "max_words"}]}, "max_words needs n"),
    ],
)
def test_bad_constraints_are_named(record, message):
    with pytest.raises(ValueError, match=message):
        check_constraints("p", "text", record)
