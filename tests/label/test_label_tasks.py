"""Tasks on one answer in the label store and API: thumbs (with a reason), ratings on the lead's
scale and edits; chosen per item or per file; checked answers; gold; agreement per kind
(Fleiss'/Cohen's κ on thumbs, Krippendorff's α on ratings); exported in the layouts training
reads."""

import pytest
from fastapi.testclient import TestClient

from label_helpers import write_items
from prefopt.data import load_records
from prefopt.label import agreement
from prefopt.label.app import create_app
from prefopt.label.export import export_rows
from prefopt.label.store import LabelError, Store

SCALE = {"1": "useless", "3": "fine", "5": "perfect"}


@pytest.fixture
def store(tmp_path):
    rows = [
        {"prompt": "Say hi.", "completion": "Hi!", "task": "thumbs"},
        {"prompt": "Say hello.", "completion": "Goodbye.", "task": "thumbs", "gold": False},
        {"prompt": "Explain tides.", "completion": "The moon pulls the sea.", "task": "rating",
         "scale": SCALE},
        {"prompt": "Spell cat.", "completion": "kat", "task": "edit"},
        {"prompt": "Rank these.", "completions": ["x", "y", "z"]},
    ]  # fmt: skip
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}", redundancy=2)
    records = load_records(
        write_items(tmp_path / "items.jsonl", rows), require_scores=False
    ).records
    assert store.add_items(records) == 5
    return store


def person(store, name, role="annotator"):
    return store.user_for_token(store.add_user(name, role))


def handed(store, who, kind):
    """Label whatever comes before an item of `kind` (skipping it), then return that item."""
    while (item := store.next_assignment(who)) is not None and item["kind"] != kind:
        store.skip(who, item["item_id"], "not this test's")
    return item


def test_each_kind_is_handed_out_with_what_the_page_needs(store):
    ann = person(store, "ann")
    rating = handed(store, ann, "rating")
    assert rating["completions"] == ["The moon pulls the sea."]
    assert rating["scale"] == {"1": "useless", "2": "", "3": "fine", "4": "", "5": "perfect"}
    assert handed(store, person(store, "bob"), "edit")["completions"] == ["kat"]


@pytest.mark.parametrize(
    ("kind", "answer", "field"),
    [
        ("thumbs", {"verdict": "meh"}, "verdict"),
        ("thumbs", {"rating": 3}, "verdict"),
        ("thumbs", {"choice": "a"}, "choice"),
        ("rating", {"rating": 6}, "rating"),
        ("rating", {"rating": True}, "rating"),
        ("edit", {"edited": "  "}, "edited"),
        ("edit", {"edited": "cat", "verdict": "good"}, "edited"),
        ("ranking", {"verdict": "good"}, "choice"),
    ],
)
def test_a_judgement_that_does_not_fit_the_task_names_the_field(store, kind, answer, field):
    ann = person(store, "ann")
    item = handed(store, ann, kind)
    with pytest.raises(LabelError) as error:
        store.submit(ann, item["item_id"], **answer)
    assert error.value.field == field
    assert store.labels() == []


def test_labels_export_as_training_rows_and_train_reads_them(store, tmp_path):
    ann, bob = person(store, "ann"), person(store, "bob")
    for who, verdict, rating, edited in ((ann, "good", 4, "cat"), (bob, "bad", 5, "kat")):
        store.submit(who, handed(store, who, "thumbs")["item_id"], verdict=verdict,
                     comment="short" if verdict == "bad" else "")  # fmt: skip
        store.submit(who, handed(store, who, "rating")["item_id"], rating=rating)
        store.submit(who, handed(store, who, "edit")["item_id"], edited=edited)
    rows, left_out = export_rows(store.labels(), "lists")
    assert sorted((r["annotator"], r["completion"], {k: r[k] for k in ("label", "rating", "edited")
                   if k in r}.popitem()) for r in rows) == [  # fmt: skip
        ("ann", "Hi!", ("label", True)), ("ann", "The moon pulls the sea.", ("rating", 4)),
        ("ann", "kat", ("edited", "cat")),
        ("bob", "Hi!", ("label", False)), ("bob", "The moon pulls the sea.", ("rating", 5)),
        ("bob", "kat", ("label", True)),  # an edit that changed nothing: the answer was right
    ]  # fmt: skip
    assert [r.get("comment") for r in rows if r["completion"] == "Hi!"] in (
        ["short", None],
        [None, "short"],
    )
    path = write_items(tmp_path / "labelled.jsonl", rows)
    singles = load_records(path, single_answers=True).records
    assert sorted(r.kind for r in singles) == [
        "label",
        "label",
        "label",
        "list",
        "rating",
        "rating",
    ]


def test_agreement_per_kind_and_against_gold(store):
    store.gold_rate = 1.0  # the gold item (a thumbs item, bad) first
    people = [person(store, name) for name in ("ann", "bob")]
    for who in people:
        while (item := store.next_assignment(who)) is not None:
            kind = item["kind"]
            if kind == "thumbs":
                store.submit(who, item["item_id"], verdict="good" if who.name == "ann" else "bad")
            elif kind == "rating":
                store.submit(who, item["item_id"], rating=5 if who.name == "ann" else 4)
            else:
                store.skip(who, item["item_id"], "later")
    summary = agreement.summary([label for label in store.judged() if label["gold"] is None])
    assert summary["thumbs"]["items_with_2_plus_labels"] == 1
    assert summary["ratings"]["items_with_2_plus_labels"] == 1
    assert {d["item_id"] for d in summary["disputed_items"]} == {1, 3}
    quality = agreement.quality(store.judged())
    assert quality["bob"]["gold_labels"] == quality["ann"]["gold_labels"] == 1
    assert quality["bob"]["gold_agreement"] == 1.0 and quality["ann"]["gold_agreement"] == 0.0
    assert quality["ann"]["majority_agreement"] == 0.0  # bob alone is ann's majority


def test_the_api_takes_each_kind(store):
    token = store.add_user("ann")
    client = TestClient(create_app(store))
    headers = {"Authorization": f"Bearer {token}"}
    seen = set()
    while (response := client.post("/api/next", headers=headers)).status_code == 200:
        item = response.json()
        body = {"thumbs": {"verdict": "good", "comment": "clear"}, "rating": {"rating": 3},
                "edit": {"edited": "cat"}, "ranking": {"ranking": [1, 2, 3]}}[item["kind"]]  # fmt: skip
        saved = client.post(
            "/api/labels", headers=headers, json={"item_id": item["item_id"], **body}
        )
        assert saved.status_code == 201, saved.text
        seen.add(item["kind"])
    assert seen == {"thumbs", "rating", "edit", "ranking"}
    bad = client.post("/api/labels", headers=headers, json={"item_id": 1, "verdict": "maybe"})
    assert bad.status_code == 422 and bad.json()["field"] == "verdict"


def test_bad_task_settings_name_the_row(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}")
    for row, message in (
        ({"prompt": "p", "completion": "a", "task": "poll"}, "task must be one of"),
        ({"prompt": "p", "completions": ["a", "b"], "task": "thumbs"}, "needs one answer"),
        ({"prompt": "p", "completion": "a", "task": "rating", "scale": {"low": "x"}}, "scale"),
        ({"prompt": "p", "completion": "a", "task": "thumbs", "gold": "yes"}, "gold"),
    ):
        records = load_records(
            write_items(tmp_path / "i.jsonl", [row]), require_scores=False
        ).records
        with pytest.raises(LabelError, match=message) as error:
            store.add_items(records)
        assert "i.jsonl, row 1" in str(error.value)
    assert store.counts()["items"] == 0
