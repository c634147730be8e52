"""The people oracle on the label store: lists become items, annotators label them through a real
`prefopt label serve` process while the oracle waits, and the rankings come back; a deadline
with no labels abstains."""

import threading
import time

import httpx
import pytest

from label_helpers import Server
from prefopt.label.store import Store
from prefopt.oracles import ListToJudge, make_oracle

pytestmark = pytest.mark.slow  # a real server process


def test_annotators_label_through_the_api_while_the_oracle_waits(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db, redundancy=2)
    tokens = [store.add_user("ann"), store.add_user("bob")]
    lists = [ListToJudge("p1", ("good", "bad")), ListToJudge("p2", ("first", "second", "third"))]
    oracle = make_oracle(
        "people", {"db": db, "labels_per_list": 2, "poll_seconds": 0.1, "deadline_minutes": 2}
    )
    progress = []
    oracle.on_progress = lambda have, wanted: progress.append((have, wanted))
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("judgements", oracle.judge(lists)))
    server = Server(None, db, "--redundancy", "2")
    try:
        waiting.start()
        for token in tokens:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as client:
                for _ in range(2):
                    item = client.post("/api/next")
                    while item.status_code == 204:  # the oracle has not added the items yet
                        item = client.post("/api/next")
                    body = item.json()  # answers name completions in item order, whatever was shown
                    if body["kind"] == "pair":
                        answer = {"choice": "a"}  # the first completion is better
                    else:  # ann ranks them in order; bob ties the last two
                        answer = {"ranking": [1, 2, 3] if token == tokens[0] else [1, 2, 2]}
                    assert (
                        client.post(
                            "/api/labels", json={"item_id": body["item_id"], **answer}
                        ).status_code
                        == 201
                    )
        waiting.join(timeout=60)
    finally:
        server.stop()
    pair, ranking = result["judgements"]
    assert pair.scores == (-1.0, -2.0)
    assert ranking.scores == (-1.0, -2.0, -2.5) and ranking.details[2] == {"ranks": [3, 2]}
    assert progress[-1] == (4, 4)  # 2 labels for each of 2 lists
    # by content: asking again adds nothing
    assert len(oracle.add(lists)) == 2 and store.counts()["items"] == 2


def test_a_deadline_with_no_label_abstains(tmp_path):
    oracle = make_oracle(
        "people",
        {"db": str(tmp_path / "labels.db"), "deadline_minutes": 0.002, "poll_seconds": 0.02},
    )
    judgement = oracle.judge([ListToJudge("p", ("a", "b"))])[0]
    assert judgement.abstained == "no label by the deadline"


def test_people_judge_each_answer_alone_with_thumbs_or_ratings(tmp_path):
    """With task thumbs (or rating) every answer of a list is an item of its own, judged alone;
    an answer scores its labels' mean verdict (or rating). Labelled through the store's own
    calls, as the app makes them, while the oracle waits."""
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db, redundancy=2)
    people = [store.user_for_token(store.add_user(name)) for name in ("ann", "bob")]
    lists = [ListToJudge("p1", ("right", "wrong")), ListToJudge("p2", ("meh", "fine", "great"))]
    for task, answer in (("thumbs", lambda text, who: {"verdict": "bad" if text == "wrong" or (
            text == "meh" and who.name == "bob") else "good"}),
                         ("rating", lambda text, who: {"rating": {"right": 5, "wrong": 1, "meh": 2,
                          "fine": 3, "great": 4 + (who.name == "bob")}[text]})):  # fmt: skip
        oracle = make_oracle("people", {"db": db, "labels_per_list": 2, "poll_seconds": 0.05,
                                        "deadline_minutes": 1, "task": task})  # fmt: skip
        result = {}
        waiting = threading.Thread(
            target=lambda o=oracle, r=result: r.setdefault("j", o.judge(lists))
        )
        waiting.start()
        deadline = time.monotonic() + 30
        while waiting.is_alive() and time.monotonic() < deadline:  # people label as items come
            for who in people:
                if (item := store.next_assignment(who)) is not None:
                    assert item["kind"] == task and len(item["completions"]) == 1
                    store.submit(who, item["item_id"], **answer(item["completions"][0], who))
            time.sleep(0.01)
        waiting.join(timeout=30)
        right_wrong, three = result["j"]
        if task == "thumbs":
            assert right_wrong.scores == (1.0, 0.0) and three.scores == (0.5, 1.0, 1.0)
        else:
            assert right_wrong.scores == (5.0, 1.0) and three.scores == (2.0, 3.0, 4.5)
            # in the order given, which depends on who reached the item first
            assert sorted(three.details[2]["rating"]) == [4.0, 5.0]
