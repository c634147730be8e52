"""Feedback on single answers: thumbs (`label`), ratings and edits read and checked as records,
grouped into lists by prompt for the objectives that compare answers, or kept apart (with a
mismatched answer each) for KTO and its kin."""

import json

import pytest

from prefopt.data import DataError, TokenizeSettings, load_records, tokenize_records
from prefopt.data.feedback import balance_warning, single_answers, with_mismatched
from prefopt.data.records import PreferenceRecord, parse_row


def write(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_each_kind_of_feedback_becomes_a_record():
    assert parse_row({"prompt": "p", "completion": "a", "label": True}) == PreferenceRecord(
        "p", ("a",), (1.0,), kind="label"
    )
    for value, score in ((False, 0.0), ("down", 0.0), ("TRUE", 1.0), (1, 1.0), ("0", 0.0)):
        assert parse_row({"prompt": "p", "completion": "a", "label": value}).scores == (score,)
    assert parse_row({"prompt": "p", "completion": "a", "rating": 4}).kind == "rating"
    edit = parse_row({"prompt": "p", "completion": "teh cat", "edited": "the cat"})
    assert (edit.completions, edit.scores, edit.kind) == (
        ("the cat", "teh cat"),
        (1.0, 0.0),
        "list",
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "completion": "a", "label": "maybe"}, '"label" must be true'),
        ({"prompt": "p", "completion": "a", "rating": "five"}, '"rating" must be a finite number'),
        ({"prompt": "p", "completion": "a", "rating": float("nan")}, '"rating" must be a finite'),
        ({"prompt": "p", "completion": "a", "label": True, "rating": 3}, '"label" and "rating"'),
        ({"prompt": "p", "completion": "a", "edited": "a"}, '"edited" is the same'),
        ({"prompt": "p", "completion": " ", "label": True}, '"completion" is empty'),
        ({"completion": "a", "label": True}, 'missing field "prompt"'),
    ],
)
def test_bad_feedback_names_file_row_and_field(tmp_path, row, message):
    rows = [{"prompt": "q", "completion": "b", "label": True}, row]
    with pytest.raises(DataError, match=message) as error:
        load_records(write(tmp_path, rows), single_answers=True)
    assert "f.jsonl, row 2" in str(error.value)


def test_single_answers_are_grouped_by_prompt_into_lists(tmp_path):
    rows = [
        {"prompt": "a", "completion": "x", "label": True},
        {"prompt": "b", "completion": "z", "rating": 4},
        {"prompt": "a", "completion": "y", "label": "false"},
        {"prompt": "b", "completion": "w", "rating": 2},
        {"prompt": "b", "completion": "v", "rating": 2},
    ]
    records = load_records(write(tmp_path, rows)).records
    assert [(r.completions, r.scores) for r in records] == [
        (("x", "y"), (1.0, 0.0)),
        (("z", "w", "v"), (4.0, 2.0, 2.0)),
    ]
    assert [r.source.split(", ", 1)[1] for r in records] == ["rows 1, 3", "rows 2, 4, 5"]


def test_a_prompt_s_single_answers_that_cannot_be_compared_say_so(tmp_path):
    lone = [{"prompt": "a", "completion": "x", "label": True}]
    with pytest.raises(DataError, match='f.jsonl, row 1: one answer with a "label".*kto'):
        load_records(write(tmp_path, lone))
    tied = [{"prompt": "a", "completion": c, "rating": 3} for c in ("x", "y")]
    with pytest.raises(DataError, match='rows 1, 2: all 2 answers .* same "rating"'):
        load_records(write(tmp_path, tied))
    skipped = load_records(write(tmp_path, lone + tied + [
        {"prompt": "b", "chosen": "u", "rejected": "v"}]), skip_invalid=True).skipped  # fmt: skip
    assert skipped == {"single answer": 1, "all scores tied": 1}


def test_spreadsheet_files_give_numbers_and_words_as_text(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("\ufeffprompt,completion,rating\nhi,there,4\nhi,you,2.5\n", encoding="utf-8")
    assert load_records(path).records[0].scores == (4.0, 2.5)
    path.write_text("prompt,completion,label\nhi,there,true\nhi,you,down\n", encoding="utf-8")
    assert load_records(path).records[0].scores == (1.0, 0.0)


def test_every_answer_alone_with_its_verdict():
    records = [
        PreferenceRecord("a", ("x",), (0.0,), kind="label"),
        PreferenceRecord("b", ("y",), (4.0,), kind="rating"),
        PreferenceRecord("b", ("z",), (3.0,), kind="rating"),
        PreferenceRecord("c", ("u", "v", "w"), (2.0, 2.0, 1.0)),
    ]
    singles = single_answers(records, desirable_rating=4)
    assert [(r.completions[0], r.scores) for r in singles] == [
        ("x", (0.0,)), ("y", (1.0,)), ("z", (0.0,)), ("u", (1.0,)), ("v", (1.0,)), ("w", (0.0,))
    ]  # fmt: skip
    with pytest.raises(DataError, match="desirable_rating"):
        single_answers(records, desirable_rating=None)


def test_kto_s_recommended_balance():
    assert balance_warning(30, 30, (1.0, 1.0)) is None
    assert balance_warning(40, 30, (1.0, 1.0)) is None  # 4/3
    warning = balance_warning(10, 30, (1.0, 1.0))
    assert "0.33" in warning and "desirable_weight in [3.00, 4.00]" in warning
    assert "no undesirable answer" in balance_warning(5, 0, (1.0, 1.0))


def test_one_answer_tokenizes_as_the_prompt_and_its_answer(tokenizer):
    record = PreferenceRecord("Say hello:", (" hello there",), (1.0,), kind="label")
    (example,), _ = tokenize_records([record], tokenizer, TokenizeSettings())
    alone = tokenizer("Say hello:")["input_ids"]
    assert list(example.prompt_ids) == alone
    assert len(example.completion_ids[0]) > 1


def test_each_answer_gets_another_prompt_s_answer(tokenizer):
    records = [PreferenceRecord(p, (a,), (1.0,), kind="label")
               for p, a in (("p1", " a"), ("p1", " b"), ("p2", " c"), ("p3", " d"))]  # fmt: skip
    lists, _ = tokenize_records(records, tokenizer, TokenizeSettings())
    paired = with_mismatched(lists)
    mismatched = [example.completion_ids[1] for example in paired]
    answers = [example.completion_ids[0] for example in lists]
    assert mismatched == [answers[2], answers[2], answers[3], answers[0]]
    assert all(p.prompt_ids == e.prompt_ids for p, e in zip(paired, lists, strict=True))
    with pytest.raises(DataError, match="two different prompts"):
        with_mismatched(lists[:2])
    assert with_mismatched(lists[:2], others=lists[2:])[0].completion_ids[1] == answers[2]
