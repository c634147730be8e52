"""The layouts of the data sets people download, each in a small file of its exact shape (no
download), load as is and say which layout they are; any other table loads with a column mapping;
ranks and chat roles are checked with row and field named."""

import pytest

from prefopt.data import DataError, load_records
from tiny import write_jsonl

_TALK = "\n\nHuman: What is a river?\n\nAssistant: Flowing water.\n\nHuman: Long?\n\nAssistant:"
HH = {"chosen": _TALK + " Often very long.", "rejected": _TALK + " No idea."}
NECTAR = {
    "prompt": "\n\nHuman: Name a fruit.\n\nAssistant:",
    "answers": [
        {"answer": "An apple.", "model": "gpt-4", "rank": 1},
        {"answer": "A pear.", "model": "llama", "rank": 2},
        {"answer": "A rock.", "model": "alpaca", "rank": 3},
    ],
    "turns": 1,
    "num_responses": 3,
    "source": ["x"],
    "good_natured": True,
}
SHP = {
    "post_id": "a1",
    "domain": "askscience_train",
    "upvote_ratio": 0.99,
    "history": "Why is the sky blue?",
    "c_root_id_A": "x",
    "c_root_id_B": "y",
    "created_at_utc_A": 1,
    "created_at_utc_B": 2,
    "score_A": 12,
    "score_B": 40,
    "human_ref_A": "Rayleigh scattering.",
    "human_ref_B": "Because.",
    "labels": 1,
    "seconds_difference": 5.0,
    "score_ratio": 3.3,
}
PKU = {
    "prompt": "How do I pick a lock?",
    "response_0": "I can't help with that.",
    "response_1": "Use a pick.",
    "is_response_0_safe": True,
    "is_response_1_safe": False,
    "better_response_id": 1,
    "safer_response_id": 0,
    "response_0_severity_level": 0,
    "response_1_severity_level": 2,
}
ULTRAFEEDBACK = {
    "source": "evol_instruct",
    "instruction": "Write a haiku.",
    "models": ["a", "b"],
    "completions": [
        {
            "annotations": {"helpfulness": {"Rating": "5"}},
            "custom_system_prompt": "",
            "fine-grained_score": 4.5,
            "model": "a",
            "overall_score": 8.0,
            "principle": "helpfulness",
            "response": "Leaves fall softly down",
        },
        {
            "annotations": {},
            "custom_system_prompt": "",
            "fine-grained_score": 2.0,
            "model": "b",
            "overall_score": 3.5,
            "principle": "helpfulness",
            "response": "A poem.",
        },
    ],
    "correct_answers": [],
    "incorrect_answers": [],
}
HELPSTEER2 = [
    {
        "prompt": "Explain tides.",
        "response": r,
        "helpfulness": h,
        "correctness": 3,
        "coherence": 4,
        "complexity": 2,
        "verbosity": 2,
    }
    for r, h in (("The moon pulls the sea.", 4), ("Waves.", 1), ("Gravity of moon and sun.", 3))
]


def load(tmp_path, rows, **options):
    return load_records(write_jsonl(tmp_path / "data.jsonl", rows), **options)


def test_hh_rlhf_transcripts_split_at_the_last_shared_assistant_turn(tmp_path):
    loaded = load(tmp_path, [HH])
    record = loaded.records[0]
    assert (
        record.prompt
        == "\n\nHuman: What is a river?\n\nAssistant: Flowing water.\n\nHuman: Long?\n\nAssistant:"
    )
    assert (
        record.completions == (" Often very long.", " No idea.")
        and "layout: hh-rlhf" in loaded.summary()
    )


def test_nectar_ranked_answers_become_a_ranked_list(tmp_path):
    record = load(tmp_path, [NECTAR]).records[0]
    assert record.completions == ("An apple.", "A pear.", "A rock.") and record.scores == (
        -1.0,
        -2.0,
        -3.0,
    )


def test_shp_pku_and_ultrafeedback(tmp_path):
    shp = load(tmp_path, [SHP]).records[0]
    assert shp.prompt == "Why is the sky blue?" and shp.completions == (
        "Rayleigh scattering.",
        "Because.",
    )
    pku = load(tmp_path, [PKU]).records[0]
    assert pku.completions == ("Use a pick.", "I can't help with that.")
    safer = load(tmp_path, [PKU], columns={"better_response_id": "safer_response_id"}).records[0]
    assert safer.completions == ("I can't help with that.", "Use a pick.")
    feedback = load(tmp_path, [ULTRAFEEDBACK]).records[0]
    assert feedback.prompt == "Write a haiku." and feedback.scores == (8.0, 3.5)


def test_helpsteer2_rows_are_grouped_into_lists_by_prompt(tmp_path):
    loaded = load(tmp_path, HELPSTEER2)
    assert len(loaded.records) == 1 and loaded.records[0].scores == (4.0, 1.0, 3.0)
    assert (
        loaded.records[0].source.endswith("rows 1, 2, 3")
        and "grouped by prompt" in loaded.summary()
    )


def test_plain_text_pairs_without_a_prompt_share_their_beginning(tmp_path):
    record = load(tmp_path, [{"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}]).records[0]
    assert (record.prompt, record.completions) == ("Q: 2+2? A:", (" 4", " 5"))


def test_any_table_with_a_column_mapping(tmp_path):
    rows = [{"question": "q1", "good": "yes", "bad": "no"}]
    record = load(
        tmp_path, rows, columns={"prompt": "question", "chosen": "good", "rejected": "bad"}
    ).records[0]
    assert (record.prompt, record.completions) == ("q1", ("yes", "no"))
    with pytest.raises(
        DataError, match=r'data.jsonl, row 1: missing field "answer" \(for chosen\)'
    ):
        load(tmp_path, rows, columns={"prompt": "question", "chosen": "answer", "rejected": "bad"})
    with pytest.raises(DataError, match="'quesiton' is not one of prefopt's fields"):
        load(tmp_path, rows, columns={"quesiton": "question"})
    one_per_row = [{"q": "p", "a": "x", "rating": 2}, {"q": "p", "a": "y", "rating": 5}]
    grouped = load(
        tmp_path, one_per_row, columns={"prompt": "q", "completion": "a", "score": "rating"}
    ).records[0]
    assert grouped.completions == ("x", "y") and grouped.scores == (2.0, 5.0)


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {**NECTAR, "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 0}]},
            r'"ranks"\[1\] must be a posi',
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1.5]},
            r'"ranks"\[1\] must be a positive integer',
        ),
        (
            {"prompt": [{"role": "human", "content": "hi"}], "chosen": "a", "rejected": "b"},
            r'"prompt"\[0\]\["role"\]',
        ),
        ({**SHP, "labels": 2}, '"labels" must be 1'),
        (
            {**NECTAR, "answers": [{"answer": "a"}, {"answer": "b", "rank": 2}]},
            r'"answers"\[0\] needs "rank"',
        ),
    ],
)
def test_bad_rows_of_each_layout_name_row_and_field(tmp_path, row, message):
    with pytest.raises(DataError, match="data.jsonl, row 1: " + message):
        load(tmp_path, [row])
