"""The labelling tools' export formats, written here from their documented schemas (Argilla 2.x
`Dataset.to_disk`: `.argilla/settings.json` and `records.json`; Label Studio's JSON export: tasks
with `data` and `annotations[].result[]`), read as prefopt records; and items as Label Studio
tasks."""

import json

import pytest

from prefopt.data import DataError, load_records
from prefopt.data.tools import label_studio_tasks


def argilla_folder(tmp_path, questions, records):
    folder = tmp_path / "argilla"
    (folder / ".argilla").mkdir(parents=True)
    settings = {"guidelines": None, "fields": [], "questions": [
        {"name": name, "title": name, "required": True, "settings": {"type": kind, "options": []}}
        for name, kind in questions.items()]}  # fmt: skip
    (folder / ".argilla" / "settings.json").write_text(json.dumps(settings))
    (folder / ".argilla" / "dataset.json").write_text(json.dumps({"name": "feedback"}))
    (folder / "records.json").write_text(json.dumps(records))
    return folder


def record(fields, **responses):
    return {"id": None, "fields": fields, "metadata": {}, "suggestions": {}, "vectors": {},
            "responses": {question: [{"value": value, "user_id": f"user-{i}"}
                                     for i, value in enumerate(values)]
                          for question, values in responses.items()}}  # fmt: skip


def test_argilla_rankings_ratings_labels_and_corrections(tmp_path):
    questions = {"ranking": "ranking", "quality": "rating", "verdict": "label_selection",
                 "fix": "text", "notes": "text"}  # fmt: skip
    records = [
        record({"prompt": "p1", "response-1": "a", "response-2": "b", "response-3": "c"},
               ranking=[["response-2", "response-3", "response-1"],
                        [{"value": "response-1", "rank": 1}, {"value": "response-2", "rank": 1},
                         {"value": "response-3", "rank": 2}]]),
        record({"instruction": "p2", "response": "d"}, quality=[4], verdict=["bad"]),
        record({"instruction": "p2", "response": "e"}, quality=[2], verdict=["👍"], fix=["E!"]),
    ]  # fmt: skip
    loaded = load_records(argilla_folder(tmp_path, questions, records))
    rows = [(r.prompt, r.completions, r.scores) for r in loaded.records]
    assert rows == [
        ("p1", ("b", "c", "a"), (-1.0, -2.0, -3.0)),
        ("p1", ("a", "b", "c"), (-1.0, -1.0, -2.0)),
        ("p2", ("d", "e"), (4.0, 2.0)),  # the two ratings of p2's answers, as a list
        ("p2", ("d", "e"), (0.0, 1.0)),  # its two verdicts
        ("p2", ("E!", "e"), (1.0, 0.0)),  # the correction: edited > original
    ]
    singles = load_records(argilla_folder(tmp_path / "b", questions, records[1:2]),
                           single_answers=True).records  # fmt: skip
    assert sorted((r.kind, r.scores) for r in singles) == [("label", (0.0,)), ("rating", (4.0,))]


def test_an_argilla_ranking_of_unknown_options_names_the_record_and_question(tmp_path):
    records = [record({"prompt": "p", "r1": "a", "r2": "b"}, ranking=[["r1", "r9"]])]
    with pytest.raises(DataError, match=r'row 1: question "ranking": ranked options \[\'r9\'\]'):
        load_records(argilla_folder(tmp_path, {"ranking": "ranking"}, records))


def label_studio_export(tmp_path, tasks):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def annotation(*results, cancelled=False):
    return {"id": 1, "completed_by": 1, "was_cancelled": cancelled, "result": list(results)}


def test_label_studio_pairwise_ranker_rating_choices_and_textarea(tmp_path):
    pair = {"data": {"prompt": "p1", "answer1": "a", "answer2": "b"}, "annotations": [
        annotation({"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise",
                    "value": {"selected": "right"}}),
        annotation({"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise",
                    "value": {"selected": "left"}}, cancelled=True)]}  # fmt: skip
    ranked = {"data": {"prompt": "p2", "items": [{"id": "x", "body": "c"}, {"id": "y", "body": "d"},
                                                 {"id": "z", "body": "e"}]},
              "annotations": [annotation({"from_name": "rank", "to_name": "items", "type": "ranker",
                                          "value": {"ranker": {"items": ["z", "x", "y"]}}})]}  # fmt: skip
    single = {"data": {"question": "p3", "answer": "f"}, "annotations": [annotation(
        {"from_name": "stars", "to_name": "answer", "type": "rating", "value": {"rating": 5}},
        {"from_name": "ok", "to_name": "answer", "type": "choices", "value": {"choices": ["Good"]}},
        {"from_name": "fix", "to_name": "answer", "type": "textarea", "value": {"text": ["F."]}})]}  # fmt: skip
    path = label_studio_export(tmp_path, [pair, ranked, single])
    loaded = load_records(path, skip_invalid=True)  # p3's lone rating and verdict compare nothing
    rows = [(r.prompt, r.completions, r.scores) for r in loaded.records]
    assert rows == [("p1", ("b", "a"), (1.0, 0.0)), ("p2", ("e", "c", "d"), (-1.0, -2.0, -3.0)),
                    ("p3", ("F.", "f"), (1.0, 0.0))]  # fmt: skip
    assert loaded.skipped == {"single answer": 2}
    singles = load_records(path, single_answers=True).records
    assert [(r.kind, r.scores) for r in singles if r.kind != "list"] == [
        ("rating", (5.0,)), ("label", (1.0,))]  # fmt: skip


def test_a_label_studio_choice_that_is_neither_good_nor_bad_is_named(tmp_path):
    task = {"data": {"prompt": "p", "answer": "a"}, "annotations": [annotation(
        {"from_name": "c", "to_name": "answer", "type": "choices", "value": {"choices": ["Meh"]}})]}  # fmt: skip
    with pytest.raises(DataError, match=r"export.json, row 1: the label 'Meh' is neither good"):
        load_records(label_studio_export(tmp_path, [task]), single_answers=True)


def test_items_as_label_studio_tasks_read_back_once_labelled(tmp_path):
    items = [{"prompt": "p1", "completions": ["a", "b"]},
             {"prompt": [{"role": "user", "content": "p2"}], "completions": ["c", "d", "e"]}]  # fmt: skip
    tasks = label_studio_tasks(items)
    assert tasks[0] == {"data": {"prompt": "p1", "answer1": "a", "answer2": "b"}}
    assert [item["body"] for item in tasks[1]["data"]["items"]] == ["c", "d", "e"]
    tasks[0]["annotations"] = [annotation({"type": "pairwise", "to_name": "answer1,answer2",
                                           "value": {"selected": "left"}})]  # fmt: skip
    tasks[1]["annotations"] = [annotation({"type": "ranker", "to_name": "items",
                                           "value": {"ranker": {"items": ["2", "0", "1"]}}})]  # fmt: skip
    records = load_records(label_studio_export(tmp_path, tasks)).records
    assert [r.completions for r in records] == [("a", "b"), ("e", "c", "d")]


def test_columns_name_a_tool_s_fields_when_they_are_not_the_usual_ones(tmp_path):
    records = [
        record({"q": "p1", "reply": "a"}, quality=[5]),
        record({"q": "p1", "reply": "b"}, quality=[2]),
    ]
    folder = argilla_folder(tmp_path, {"quality": "rating"}, records)
    with pytest.raises(DataError, match="no answer field"):
        load_records(folder)
    loaded = load_records(folder, columns={"prompt": "q", "completion": "reply"}).records
    assert [(r.prompt, r.completions, r.scores) for r in loaded] == [("p1", ("a", "b"), (5.0, 2.0))]
    tasks = [{"data": {"q": "p2", "reply": "c"}, "annotations": [annotation(
        {"type": "rating", "to_name": "reply", "value": {"rating": 4}})]},
             {"data": {"q": "p2", "reply": "d"}, "annotations": [annotation(
        {"type": "rating", "to_name": "reply", "value": {"rating": 1}})]}]  # fmt: skip
    rows = load_records(label_studio_export(tmp_path, tasks), columns={"prompt": "q"}).records
    assert [(r.prompt, r.completions, r.scores) for r in rows] == [("p2", ("c", "d"), (4.0, 1.0))]
