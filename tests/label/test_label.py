"""The labelling store, agreement statistics, export and the JSON API, in process."""

import json
import math
import os
import random
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from label_helpers import HOSTILE, item_rows, write_items
from prefopt.data import load_records
from prefopt.label import agreement
from prefopt.label.app import create_app
from prefopt.label.export import export_rows
from prefopt.label.limits import FailedLogins
from prefopt.label.store import LabelError, Store

# ---------------------------------------------------------------- agreement: published values
NA = None
KRIPPENDORFF_2011 = list(
    zip(
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NA, NA, NA],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NA, 3],
        [NA, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NA],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NA],
        strict=True,
    )
)


@pytest.mark.parametrize(
    ("metric", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_krippendorff_alpha_matches_krippendorff_2011(metric, expected):
    assert agreement.krippendorff_alpha(KRIPPENDORFF_2011, metric) == pytest.approx(
        expected, abs=5e-4
    )


def test_fleiss_kappa_matches_fleiss_1971_example():
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    units = [
        [category for category, count in enumerate(row) for _ in range(count)] for row in table
    ]
    assert agreement.fleiss_kappa(units) == pytest.approx(0.210, abs=5e-4)


def test_cohen_kappa_textbook_example_and_edge_cases():
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert agreement.cohen_kappa(first, second) == pytest.approx(0.4)
    assert agreement.cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    assert math.isnan(agreement.cohen_kappa(["a", "a"], ["a", "a"]))  # one category: undefined
    assert math.isnan(agreement.krippendorff_alpha([[1], [2, None]]))  # nothing pairable


# ---------------------------------------------------------------- store
@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}", redundancy=2)
    items = load_records(write_items(tmp_path / "items.jsonl", item_rows()), require_scores=False)
    assert store.add_items(items.records) == 5
    assert store.add_items(items.records) == 0  # the same rows again add nothing
    return store


def person(store, name, role="annotator"):
    return store.user_for_token(store.add_user(name, role))


def test_assignment_holds_redundancy_priority_and_expiry(store):
    ann, bob, cat = person(store, "ann"), person(store, "bob"), person(store, "cat")
    first = store.next_assignment(ann)
    assert store.next_assignment(ann)["item_id"] == first["item_id"]  # held until labelled
    # redundancy 2: a second person
    assert store.next_assignment(bob)["item_id"] == first["item_id"]
    # two hold it: the third gets another
    assert store.next_assignment(cat)["item_id"] != first["item_id"]
    store.set_priorities({5: 10.0})
    store.submit(ann, first["item_id"], choice="a")
    assert store.next_assignment(ann)["item_id"] == 5  # highest priority first
    dan = person(store, "dan")
    store.assignment_minutes = -1  # everything handed out from now on is already expired
    expired = store.next_assignment(dan)
    assert store.next_assignment(person(store, "eve"))["item_id"] == expired["item_id"]


def test_display_order_is_random_and_recorded_with_the_label(store):
    # seeded: with 10 draws of 2 orders an unseeded test would fail 1 run in 512
    rng = random.Random(7)
    people = [person(store, f"p{i}") for i in range(10)]
    shown = [store.next_assignment(someone, rng=rng) for someone in people]
    pair_orders = {
        tuple(item["display_order"]) for item in shown if len(item["display_order"]) == 2
    }
    assert pair_orders == {(0, 1), (1, 0)}
    for someone, item in zip(people[:2], shown[:2], strict=True):
        store.submit(someone, item["item_id"], choice="a")
    recorded = {lab["annotator"]: lab["display_order"] for lab in store.labels()}
    assert recorded == {"p0": shown[0]["display_order"], "p1": shown[1]["display_order"]}


def test_submit_validates_and_changes_nothing_on_error(store):
    ann = person(store, "ann")
    pair = store.next_assignment(ann)
    for kwargs, field in [
        ({"choice": "left"}, "choice"),
        ({"ranking": [1, 2]}, "choice"),
        ({"choice": "a", "comment": "x" * 2001}, "comment"),
    ]:
        with pytest.raises(Exception) as error:
            store.submit(ann, pair["item_id"], **kwargs)
        assert error.value.field == field
    with pytest.raises(Exception, match="no item with id 999"):
        store.submit(ann, 999, choice="a")
    assert store.labels() == []
    store.submit(ann, pair["item_id"], choice="tie", comment="'; DROP TABLE labels; --")
    with pytest.raises(Exception, match="already labelled"):
        store.submit(ann, pair["item_id"], choice="a")
    assert [lab["comment"] for lab in store.labels()] == ["'; DROP TABLE labels; --"]


@pytest.mark.parametrize(
    "ranking", [[1, 1, 1, 2], [1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 5], [1, 3, 3, 3], [2, 2, 3, 4]]
)
def test_a_ranking_must_be_a_ranking(store, ranking):
    ann = person(store, "ann")
    store.set_priorities({5: 1.0})
    with pytest.raises(Exception) as error:
        store.submit(ann, store.next_assignment(ann)["item_id"], ranking=ranking)
    assert error.value.field == "ranking"


def label_all(store, votes: dict[str, list]):
    """Each person labels every item, in item order: votes[name][i] is a choice or a ranking."""
    for name, answers in votes.items():
        who = person(store, name)
        for answer in answers:
            item = store.next_assignment(who)
            key = "ranking" if isinstance(answer, list) else "choice"
            store.submit(who, item["item_id"], **{key: answer})


def test_export_lists_keeps_order_and_ties_and_loads_in_train(store, tmp_path):
    label_all(
        store,
        {
            "ann": ["a", "b", "tie", "both_bad", [1, 2, 2, 4]],
            "bob": ["a", "a", "a", "b", [2, 1, 3, 4]],
        },
    )
    rows, left_out = export_rows(store.labels(), "lists")
    assert len(rows) == 8 and sum(left_out.values()) == 2  # ann's tie and both-bad prefer nothing
    assert left_out == {
        "labels with no preference (a tie)": 1,
        "labels calling both answers bad": 1,
    }
    assert [1, 2, 2, 4] in [row["ranks"] for row in rows]
    path = write_items(tmp_path / "lists.jsonl", rows)
    records = load_records(path).records
    assert len(records) == 8 and (-1, -2, -2, -4) in [r.scores for r in records]


def test_both_bad_is_its_own_judgement(tmp_path):
    """Its ranks are a tie's (neither answer is preferred), but the store, the export and the
    people oracle tell it apart: a pair only called both bad abstains, with that reason."""
    from prefopt.oracles import ListToJudge, make_oracle

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    oracle = make_oracle("people", {"db": url, "deadline_minutes": 0})
    lists = [ListToJudge("p1", ("a", "b")), ListToJudge("p2", ("c", "d"))]
    ids = oracle.add(lists, priorities=[2.0, 1.0])
    store = Store(url)
    label_all(store, {"ann": ["tie", "both_bad"]})
    found = store.judgements(ids)
    assert [found[i][0]["choice"] for i in ids] == ["tie", "both_bad"] and found[ids[1]][0][
        "ranks"
    ] == [1, 1]
    tie, bad = oracle.judge(lists)
    assert tie.abstained is None and tie.all_tied and bad.abstained == "both answers bad"


def test_export_pairs_is_the_majority(store, tmp_path):
    store.redundancy = 3
    label_all(
        store,
        {
            "ann": ["a", "b", "tie", "a", [1, 2, 3, 4]],
            "bob": ["a", "a", "a", "a", [1, 2, 3, 4]],
            "cat": ["b", "a", "tie", "a", [1, 2, 4, 3]],
        },
    )
    rows, left_out = export_rows(store.labels(), "pairs")
    by_item = {}
    for row in rows:
        by_item.setdefault(row["item_id"], []).append(row)
    first = by_item[1][0]
    assert first["chosen"].startswith("It is") and first["votes"] == {
        "chosen": 2,
        "rejected": 1,
        "no_preference": 0,
    }
    assert 3 not in by_item  # tie, a, tie: no preference wins
    assert len(by_item[5]) == 6  # all 6 pairs of the list have a majority (the last two 2 to 1)
    assert [r["votes"]["rejected"] for r in by_item[5]] == [0, 0, 0, 0, 0, 1]
    assert left_out["pairs without a majority preference"] == 1
    assert len(load_records(write_items(tmp_path / "pairs.jsonl", rows)).records) == len(rows)


# ---------------------------------------------------------------- the JSON API in process
@pytest.fixture
def client(store):
    return TestClient(create_app(store), base_url="http://localhost")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_every_endpoint_needs_a_token_and_admin_endpoints_need_an_admin(client, store):
    ann = bearer(store.add_user("ann"))
    routes = [
        ("get", "/api/me"),
        ("post", "/api/next"),
        ("post", "/api/labels"),
        ("get", "/api/labels"),
        ("get", "/api/admin/stats"),
        ("get", "/api/admin/labels"),
        ("post", "/api/admin/priorities"),
        ("get", "/api/openapi.json"),
        ("post", "/api/logout"),
    ]
    for method, path in routes:
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers=bearer("wrong")).status_code == 401, path
    for method, path in routes:
        if "/admin/" in path:
            assert getattr(client, method)(path, headers=ann).status_code == 403, path
    assert client.get("/label").status_code == 401 and "Log in" in client.get("/label").text
    assert client.get("/admin", headers=ann).status_code == 403
    assert client.get("/login").status_code == 200


def test_login_sets_an_http_only_secure_cookie(store):
    # a client sends secure cookies on https
    client = TestClient(create_app(store), base_url="https://localhost")
    token = store.add_user("ann")
    assert client.post("/api/login", json={"token": "nope"}).status_code == 401
    response = client.post("/api/login", json={"token": token})
    cookie = response.headers["set-cookie"].lower()
    assert (
        response.status_code == 200
        and "httponly" in cookie
        and "secure" in cookie
        and "samesite=strict" in cookie
    )
    assert client.get("/api/me").json()["name"] == "ann"  # the cookie alone is enough


def test_annotators_see_only_their_own_labels(client, store):
    ann, bob = bearer(store.add_user("ann")), bearer(store.add_user("bob"))
    item = client.post("/api/next", headers=ann).json()
    assert (
        client.post(
            "/api/labels", headers=ann, json={"item_id": item["item_id"], "choice": "a"}
        ).status_code
        == 201
    )
    assert len(client.get("/api/labels", headers=ann).json()) == 1
    assert client.get("/api/labels", headers=bob).json() == []
    assert (
        client.get("/api/admin/labels", headers=bob, params={"annotator": "ann"}).status_code == 403
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item_id": "1", "choice": "a"}, "item_id"),
        ({"item_id": 1, "choice": "best"}, "choice"),
        ({"item_id": 1, "choice": "a", "comment": "x" * 2001}, "comment"),
        ({"item_id": 1, "choice": "a", "x": 1}, "x"),
        ({"item_id": 12345, "choice": "a"}, "item_id"),
        ({"choice": "a"}, "item_id"),
        ({"item_id": 5, "ranking": [1, 1, 2, 3]}, "ranking"),
        ({"item_id": 5, "ranking": ["1", 2, 3, 4]}, "ranking.0"),
        # numbers past what the databases hold, and lists past any item's length
        ({"item_id": 2**31, "choice": "a"}, "item_id"),
        ({"item_id": 0, "choice": "a"}, "item_id"),
        ({"item_id": 5, "ranking": [1, 2, 3, 10**30]}, "ranking.3"),
        ({"item_id": 5, "ranking": [1] * 257}, "ranking"),
    ],
)
def test_malformed_requests_get_a_4xx_naming_the_field_and_change_nothing(
    client, store, body, field
):
    ann = bearer(store.add_user("ann"))
    store.set_priorities({5: 1.0})
    client.post("/api/next", headers=ann)
    if body.get("item_id") == 1:
        store.set_priorities({5: 0.0, 1: 2.0})
    response = client.post("/api/labels", headers=ann, json=body)
    assert 400 <= response.status_code < 500 and response.json()["field"] == field, response.json()
    assert field.split(".")[0] in response.json()["detail"]
    assert store.labels() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"priorities": {"1": NaN}}', "priorities.1"),
        (b'{"priorities": {"1": Infinity}}', "priorities.1"),
        (b'{"priorities": {"1": 1e300}}', "priorities.1"),
        (b'{"priorities": {"99999999999": 1.0}}', "priorities"),
        (b'{"priorities": {"-3": 1.0}}', "priorities"),
        (b'{"priorities": {"abc": 1.0}}', "priorities"),
    ],
)
def test_priorities_are_finite_and_ids_in_range(client, store, body, field):
    admin = bearer(store.add_user("boss", "admin"))
    response = client.post(
        "/api/admin/priorities", headers={**admin, "content-type": "application/json"}, content=body
    )
    assert response.status_code == 422 and response.json()["field"].startswith(field), (
        response.json()
    )
    assert {item["priority"] for item in _items(store)} == {0.0}  # nothing changed


def _items(store):
    import sqlalchemy as sa

    with store.engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(sa.text("SELECT id, priority FROM items"))
        ]


def test_a_large_admin_request_is_written_in_chunks_the_database_accepts(client, store):
    """33,000 priorities in one request: more ids than SQLite binds in one statement (32,766)."""
    from prefopt.data import PreferenceRecord

    store.add_items(
        [
            PreferenceRecord(f"p{i}", (f"a{i}", f"b{i}"), (0.0, 0.0), source=f"bulk {i}")
            for i in range(33_000)
        ]
    )
    admin = bearer(store.add_user("boss", "admin"))
    ids = [item["id"] for item in _items(store)]
    response = client.post(
        "/api/admin/priorities", headers=admin, json={"priorities": {str(i): i / 7 for i in ids}}
    )
    assert response.status_code == 200 and response.json() == {"updated": len(ids)}, response.json()
    assert {item["id"]: item["priority"] for item in _items(store)} == pytest.approx(
        {i: i / 7 for i in ids}
    )
    too_many = client.post(
        "/api/admin/priorities",
        headers=admin,
        json={"priorities": {str(i): 1.0 for i in range(1, 50_002)}},
    )
    assert too_many.status_code in (413, 422)  # the body limit or the count, never a 500


def test_not_json_is_a_clear_4xx(client, store):
    ann = bearer(store.add_user("ann"))
    response = client.post("/api/labels", headers=ann, content=b"{not json")
    assert response.status_code == 422 and "detail" in response.json()


def test_stats_and_openapi(client, store):
    admin = bearer(store.add_user("boss", "admin"))
    label_all(
        store,
        {"ann": ["a", "b", "tie", "a", [1, 2, 3, 4]], "bob": ["a", "a", "tie", "a", [1, 2, 3, 4]]},
    )
    stats = client.get("/api/admin/stats", headers=admin).json()
    assert stats["labels"] == 10 and stats["items_complete"] == 5
    assert stats["agreement"]["rankings"]["krippendorff_alpha_ordinal"] == 1.0
    assert stats["agreement"]["pairs"]["cohen_kappa_by_pair"]["ann / bob"]["items"] == 4
    assert [d["item_id"] for d in stats["agreement"]["disputed_items"]] == [2]
    schema = client.get("/api/openapi.json", headers=admin).json()
    assert {"/api/next", "/api/labels", "/api/admin/stats"} <= set(schema["paths"])


def test_hostile_text_is_stored_verbatim(client, store, tmp_path):
    rows = [{"prompt": "p'; DROP TABLE items; --", "completions": list(HOSTILE[:2])}]
    records = load_records(
        write_items(tmp_path / "hostile.jsonl", rows), require_scores=False
    ).records
    store.add_items(records)
    store.set_priorities({6: 9.0})
    ann = bearer(store.add_user("ann"))
    item = client.post("/api/next", headers=ann).json()
    assert item["prompt"] == rows[0]["prompt"] and sorted(item["completions"]) == sorted(
        HOSTILE[:2]
    )


def test_every_response_carries_the_security_headers(client, store):
    from prefopt.label.headers import HEADERS

    ann = bearer(store.add_user("ann"))
    responses = [
        client.get("/login"),
        client.get("/label"),
        client.get("/label", headers=ann),
        client.get("/api/me"),
        client.get("/api/me", headers=ann),
        client.get("/nowhere"),
        client.get("/assets/label.js"),
        client.get("/assets/../app.py"),
        client.post("/api/labels", headers=ann, content=b"x" * (2 << 20)),
    ]
    assert [r.status_code for r in responses] == [200, 401, 200, 401, 200, 404, 200, 404, 413]
    for response in responses:
        for name, value in HEADERS.items():
            assert response.headers[name] == value, (response.url, name)
    assert "script-src 'self'" in HEADERS["content-security-policy"]
    assert "unsafe-inline" not in HEADERS["content-security-policy"]


def test_the_pages_hold_no_inline_script_or_style_and_their_assets_are_served(client, store):
    import re

    ann = bearer(store.add_user("ann"))
    admin = bearer(store.add_user("boss", "admin"))
    for path, who in (("/login", ann), ("/label", ann), ("/admin", admin)):
        page = client.get(path, headers=who).text
        # every script from a file
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == [], path
        assert "<style" not in page and " style=" not in page and " on" + "click=" not in page, path
        for asset in re.findall(r'(?:src|href)="(/assets/[^"]+)"', page):
            response = client.get(asset)
            assert response.status_code == 200 and response.headers["content-type"].startswith(
                ("text/javascript", "text/css")
            ), asset


def test_annotators_see_nothing_of_where_an_item_came_from(client, store):
    ann, boss = bearer(store.add_user("ann")), bearer(store.add_user("boss", "admin"))
    item = client.post("/api/next", headers=ann).json()
    client.post("/api/labels", headers=ann, json={"item_id": item["item_id"], "choice": "a"})
    sources = {label["source"] for label in client.get("/api/admin/labels", headers=boss).json()}
    assert sources and all(sources)  # admins see it
    seen = json.dumps(
        [
            item,
            client.get("/api/labels", headers=ann).json(),
            client.get("/api/me", headers=ann).json(),
        ]
    )
    assert "source" not in seen and not any(source in seen for source in sources)


def test_a_get_changes_nothing(client, store):
    # a prefetching browser or a link preview must not take an item from the queue
    ann = bearer(store.add_user("ann"))
    assert client.get("/api/next", headers=ann).status_code == 405
    assert client.get("/api/me", headers=ann).json()["labelled_by_you"] == 0
    first = client.post("/api/next", headers=ann).json()
    # still held for ann
    assert client.post("/api/next", headers=ann).json()["item_id"] == first["item_id"]


def test_an_item_is_its_content(tmp_path):
    """The same rows served by another path add nothing; a changed row is a new item, the old one
    and its labels kept; a store made before items had a content key gets one, so its rows are
    recognised too."""
    import shutil

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from prefopt.label import store as store_module

    rows = item_rows()
    (tmp_path / "a").mkdir()
    first = write_items(tmp_path / "a" / "items.jsonl", rows)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(url)
    assert store.add_items(load_records(first, require_scores=False).records) == 5
    other = tmp_path / "b" / "copy.jsonl"
    other.parent.mkdir()
    shutil.copy(first, other)
    assert store.add_items(load_records(other, require_scores=False).records) == 0
    label_all(store, {"ann": ["a"]})
    changed = [
        dict(rows[0], completions=[rows[0]["completions"][0], "a new second answer"]),
        *rows[1:],
    ]
    assert (
        store.add_items(
            load_records(write_items(tmp_path / "c.jsonl", changed), require_scores=False).records
        )
        == 1
    )
    assert store.counts()["items"] == 6 and len(store.labels()) == 1
    # an old store: tables at the first revision, items without a content key
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option(
        "script_location", str(Path(store_module.__file__).parent / "migrations")
    )
    engine = sa.create_engine(old_url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            sa.text(
                "INSERT INTO items (source, prompt, completions, k, priority, created_at) VALUES "
                "('old.jsonl, row 1', :prompt, :completions, 2, 0, '2026-01-01')"
            ),
            {
                "prompt": json.dumps(rows[0]["prompt"]),
                "completions": json.dumps(rows[0]["completions"]),
            },
        )
    engine.dispose()
    upgraded = Store(old_url)
    # its first row is known
    assert upgraded.add_items(load_records(first, require_scores=False).records) == 4


def test_a_database_file_deleted_while_serving_refuses_writes(client, store, tmp_path):
    """Deleted under a running server, the SQLite file's connections would go on writing into the
    unlinked file and acknowledge labels that are gone: every write is refused with 503 instead,
    saying why; reads still answer."""
    ann = bearer(store.add_user("ann"))
    item = client.post("/api/next", headers=ann).json()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"labels.db{suffix}").unlink(missing_ok=True)
    response = client.post(
        "/api/labels", headers=ann, json={"item_id": item["item_id"], "choice": "a"}
    )
    assert response.status_code == 503 and "is gone" in response.json()["detail"], response.json()
    assert client.post("/api/next", headers=ann).status_code == 503
    assert client.get("/api/me", headers=ann).status_code == 200


def test_a_read_only_database_says_so(tmp_path):
    """A database that cannot be written (here opened read-only) refuses a write with 503 and
    says it is read-only; it never acknowledges what it cannot keep."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    Store(url).add_user("ann")
    read_only = Store(f"sqlite:///file:{tmp_path / 'labels.db'}?mode=ro&uri=true", migrate=False)
    with pytest.raises(LabelError, match="read-only; nothing can be saved") as raised:
        read_only.add_user("bob")
    assert raised.value.status == 503


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ann\u200b", "invisible character (U+200B)"),
        ("ann\u202eevil", "U+202E"),
        ("bob\x07", "U+0007"),
        ("   ", "the name is empty"),
        ("x" * 201, "at most 200"),
    ],
)
def test_names_hold_no_hidden_characters(tmp_path, name, message):
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}")
    with pytest.raises(LabelError, match=re.escape(message)):
        store.add_user(name)


def test_names_are_normalized_and_unique_whatever_their_case(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}")
    store.add_user("Ann")
    for same in ("ann", "ANN", " Ann ", "Ａｎｎ"):  # the last in fullwidth letters, NFKC's "Ann"
        with pytest.raises(LabelError, match="a person named 'Ann' already exists"):
            store.add_user(same)
    token = store.add_user("ｂｏｂ")
    assert store.user_for_token(token).name == "bob"


def test_a_login_is_a_session_that_logging_out_expiry_and_revoking_end(client, store):
    token = store.add_user("ann")
    login = client.post("/api/login", json={"token": token})
    cookie = login.cookies["prefopt_session"]
    assert cookie != token and token not in login.headers["set-cookie"]
    browser = {"Cookie": f"prefopt_session={cookie}"}
    assert client.get("/api/me", headers=browser).status_code == 200
    client.post("/api/logout", headers=browser)
    ended = client.get("/api/me", headers=browser)
    assert ended.status_code == 401 and "session has ended" in ended.json()["detail"]
    # the token itself still works
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    expired = store.start_session(store.user_for_token(token), hours=-1)
    assert (
        client.get("/api/me", headers={"Cookie": f"prefopt_session={expired}"}).status_code == 401
    )
    live = client.post("/api/login", json={"token": token}).cookies["prefopt_session"]
    assert store.revoke("ann", new_token=False) is None
    assert client.get("/api/me", headers={"Cookie": f"prefopt_session={live}"}).status_code == 401
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    fresh = store.revoke("ANN", new_token=True)  # names match whatever their case
    assert client.get("/api/me", headers=bearer(fresh)).status_code == 200
    with pytest.raises(LabelError, match="no person named 'zoe'"):
        store.revoke("zoe", new_token=True)


def test_the_openapi_schema_gives_every_error_code_and_its_real_shape(client, store):
    admin = bearer(store.add_user("boss", "admin"))
    schema = client.get("/api/openapi.json", headers=admin).json()
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) == {"detail", "field"}
    expected = {
        ("/api/labels", "post"): {"401", "404", "409", "413", "422", "503"},
        ("/api/next", "post"): {"401", "413", "503"},
        ("/api/admin/priorities", "post"): {"401", "403", "404", "413", "422", "503"},
        ("/api/admin/stats", "get"): {"401", "403", "413"},
    }
    for (path, method), codes in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert codes <= set(responses), (path, set(responses))
        for code in codes:
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorOut"
            )
    # and the errors answered have that shape
    for response in (
        client.get("/api/me"),
        client.get("/api/admin/stats", headers=bearer(store.add_user("ann"))),
        client.post("/api/labels", headers=admin, json={"item_id": "x"}),
    ):
        assert set(response.json()) == {"detail", "field"}, response.json()


def test_skip_with_a_reason_and_undo_within_its_window(client, store):
    ann = bearer(store.add_user("ann"))
    first = client.post("/api/next", headers=ann).json()
    skip = lambda reason: client.post(
        "/api/skip", headers=ann, json={"item_id": first["item_id"], "reason": reason}
    )
    assert skip(" ").status_code == 422 and skip("unclear").status_code == 200
    second = client.post("/api/next", headers=ann).json()
    assert second["item_id"] != first["item_id"]  # a skipped item is never handed back
    assert store.counts()["skipped"] == 1 and store.counts()["annotators"][0]["skipped"] == 1
    judged = {"choice": "a"} if second["kind"] == "pair" else {"ranking": [1, 2, 3, 4]}
    answer = {"item_id": second["item_id"], **judged}
    label = client.post("/api/labels", headers=ann, json=answer).json()
    undone = client.delete(f"/api/labels/{label['id']}", headers=ann)
    assert (
        undone.status_code == 200
        and undone.json()["item_id"] == second["item_id"]
        and store.labels() == []
    )
    # back to them first
    assert client.post("/api/next", headers=ann).json()["item_id"] == second["item_id"]
    again = client.post("/api/labels", headers=ann, json=answer).json()
    bob = bearer(store.add_user("bob"))
    # only your own
    assert client.delete(f"/api/labels/{again['id']}", headers=bob).status_code == 404
    import datetime as dt

    import sqlalchemy as sa

    with store.engine.begin() as connection:  # three minutes later
        connection.execute(
            sa.text("UPDATE labels SET created_at = :t"),
            {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=3)},
        )
    late = client.delete(f"/api/labels/{again['id']}", headers=ann)
    assert late.status_code == 409 and "can be undone for 120 s" in late.json()["detail"]


def test_guidelines_are_served_when_given(store):
    ann = bearer(store.add_user("ann"))
    assert (
        TestClient(create_app(store), base_url="http://localhost")
        .get("/api/guidelines", headers=ann)
        .status_code
        == 204
    )
    with_rules = TestClient(
        create_app(store, guidelines="# Rules\n- be kind"), base_url="http://localhost"
    )
    assert with_rules.get("/api/guidelines", headers=ann).json() == {
        "markdown": "# Rules\n- be kind"
    }


def test_gold_items_are_mixed_in_measure_people_and_stay_out_of_the_data(tmp_path):
    rows = [
        *item_rows(3, 0),
        {"prompt": "Gold: 2 + 2?", "completions": ["4", "5"], "gold": "a"},
        {"prompt": "Gold ranking", "completions": ["w", "x", "y", "z"], "gold": [1, 2, 2, 4]},
    ]
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(url, redundancy=4, gold_rate=1.0)  # every item a gold one while any is left
    assert (
        store.add_items(
            load_records(write_items(tmp_path / "items.jsonl", rows), require_scores=False).records
        )
        == 5
    )
    answers = {
        # ann agrees with gold, cat does not
        "ann": {"Gold: 2 + 2?": "a", "Gold ranking": [1, 2, 2, 4]},
        "cat": {"Gold: 2 + 2?": "b", "Gold ranking": [4, 3, 2, 1]},
    }
    for name in ("ann", "bob", "cat", "dan"):
        who, handed = person(store, name), []
        while (item := store.next_assignment(who)) is not None:
            handed.append(item)
            gold = answers.get(name, {}).get(
                item["prompt"], "a" if item["kind"] == "pair" else [1, 2, 3, 4]
            )
            answer = gold if item["prompt"].startswith("Gold") else ("b" if name == "cat" else "a")
            store.submit(
                who,
                item["item_id"],
                **({"ranking": answer} if isinstance(answer, list) else {"choice": answer}),
            )
        # gold first, at rate 1 (in an order of each person's own: test_gold_order_is_each_persons)
        assert {item["prompt"] for item in handed[:2]} == {"Gold: 2 + 2?", "Gold ranking"}
    quality = store.quality()
    assert quality["ann"]["gold_labels"] == 2 and quality["ann"]["gold_agreement"] == 1.0
    assert quality["cat"]["gold_agreement"] < 0.5 and quality["cat"]["majority_agreement"] == 0.0
    # with bob and dan, against cat, on every regular pair
    assert quality["ann"]["majority_agreement"] == 1.0
    rows_out, left_out = export_rows(store.labels(), "lists")
    assert left_out["labels of gold items"] == 8 and all(
        not r["prompt"].startswith("Gold") for r in rows_out
    )
    bad = [{"prompt": "p", "completions": ["a", "b"], "gold": "c"}]
    with pytest.raises(LabelError, match=r"row 1: gold: choice must be one of a, b, tie, both_bad"):
        store.add_items(
            load_records(write_items(tmp_path / "bad.jsonl", bad), require_scores=False).records
        )


def test_admin_statistics_stay_fast_with_100000_labels(tmp_path):
    """Statistics read ids and ranks in SQL-sized pieces, not every label with its texts: on a store
    of 50,000 items with long answers and 100,000 labels, one stats request reads the texts of the
    100 disputed items it shows and no others (its time is printed, not asserted: a shared machine's
    speed varies; reading every label with its texts took 7.6 s where this takes 2–5)."""
    import time

    import sqlalchemy as sa

    store = Store(f"sqlite:///{tmp_path / 'labels.db'}", redundancy=2)
    admin = bearer(store.add_user("boss", "admin"))
    store.add_user("ann")
    store.add_user("bob")
    now = "2026-12-01 12:00:00"
    long = "a long answer " * 200  # 2.8 kB a completion: loading texts would dominate
    with store.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO items (source, content, prompt, completions, k, priority, created_at) "
                "VALUES (:s, :c, :p, :q, 2, 0, :t)"
            ),
            [
                {
                    "s": f"bulk {i}",
                    "c": f"{i:064d}",
                    "p": json.dumps(f"prompt {i}"),
                    "q": json.dumps([long + str(i), long]),
                    "t": now,
                }
                for i in range(1, 50_001)
            ],
        )
        users = dict(connection.execute(sa.text("SELECT name, id FROM users")).all())
        connection.execute(
            sa.text(
                "INSERT INTO labels (item_id, user_id, choice, ranks, display_order, comment, "
                "seconds, created_at) VALUES (:i, :u, :c, :r, '[0, 1]', '', 3.0, :t)"
            ),
            [
                {
                    "i": i,
                    "u": users[name],
                    "c": choice,
                    "t": now,
                    "r": json.dumps([1, 2] if choice == "a" else [2, 1]),
                }
                for i in range(1, 50_001)
                for name, choice in (("ann", "a"), ("bob", "a" if i % 10 else "b"))
            ],
        )
    client = TestClient(create_app(store), base_url="http://localhost")
    texts_read = []  # the parameters of every statement that reads the items' texts

    def record(_connection, _cursor, statement, parameters, _context, _many):
        if "completions" in statement:
            texts_read.append(parameters)

    sa.event.listen(store.read_engine, "before_cursor_execute", record)
    started = time.perf_counter()
    stats = client.get("/api/admin/stats", headers=admin).json()
    seconds = time.perf_counter() - started
    sa.event.remove(store.read_engine, "before_cursor_execute", record)
    assert stats["labels"] == 100_000 and stats["items_complete"] == 50_000
    disputed = stats["agreement"]["disputed_items"]
    assert (
        len(disputed) == 100
        and disputed[0]["prompt"].startswith("prompt ")
        and len(disputed[0]["completions"]) == 2
    )
    print(f"stats over 100,000 labels: {seconds:.2f} s")
    if os.environ.get("PREFOPT_MEASURE_OLD_STATS"):  # what reading every label with its texts cost
        started = time.perf_counter()
        agreement.summary(store.labels())
        print(
            f"every label with its texts, then the summary: {time.perf_counter() - started:.2f} s"
        )
    # the texts of the disputed items only, by id, in SQL-sized pieces
    assert texts_read and sum(len(parameters) for parameters in texts_read) == 100, texts_read


def test_the_admin_exports_and_filters_by_person_and_time(client, store):
    admin = bearer(store.add_user("boss", "admin"))
    label_all(store, {"ann": ["a", "b"], "bob": ["tie", "a"]})
    everything = client.get("/api/admin/labels", headers=admin).json()
    assert {label["annotator"] for label in everything} == {"ann", "bob"}
    assert {
        label["annotator"]
        for label in client.get(
            "/api/admin/labels", headers=admin, params={"annotator": "bob"}
        ).json()
    } == {"bob"}
    assert (
        client.get(
            "/api/admin/labels", headers=admin, params={"since": "2999-01-01T00:00:00Z"}
        ).json()
        == []
    )
    assert (
        len(
            client.get(
                "/api/admin/labels", headers=admin, params={"until": "2999-01-01T00:00:00Z"}
            ).json()
        )
        == 4
    )
    exported = client.get(
        "/api/admin/export", headers=admin, params={"format": "lists", "annotator": "ann"}
    )
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert rows == export_rows(store.labels("ann"), "lists")[0]
    assert (
        client.get("/api/admin/export", headers=admin, params={"format": "csv"}).status_code == 422
    )


# ---------------------------------------------------------------- what annotators could game
def gold_store(tmp_path, golds: int = 0, **settings):
    rows = [*item_rows(3, 0), {"prompt": "Gold: 2 + 2?", "completions": ["4", "5"], "gold": "a"}]
    rows += [
        {"prompt": f"Gold {n}: which?", "completions": ["yes", "no"], "gold": "a"}
        for n in range(golds)
    ]
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}", **settings)
    store.add_items(
        load_records(write_items(tmp_path / "items.jsonl", rows), require_scores=False).records
    )
    return store


def test_a_gold_answer_never_reaches_the_annotator(tmp_path):
    store = gold_store(tmp_path, gold_rate=1.0)
    client = TestClient(create_app(store), base_url="http://localhost")
    ann = bearer(store.add_user("ann"))
    item = client.post("/api/next", headers=ann).json()
    assert item["prompt"] == "Gold: 2 + 2?" and "gold" not in item
    client.post("/api/labels", headers=ann, json={"item_id": item["item_id"], "choice": "b"})
    seen = [client.get("/api/labels", headers=ann).text, client.get("/api/me", headers=ann).text]
    assert all('"gold"' not in text for text in seen)


def test_undoing_a_gold_label_does_not_change_the_agreement_it_measured(tmp_path):
    store = gold_store(tmp_path, gold_rate=1.0)
    ann = person(store, "ann")
    item = store.next_assignment(ann)
    label_id = store.submit(ann, item["item_id"], choice="b")  # wrong
    assert store.undo(ann, label_id) == item["item_id"]
    again = store.next_assignment(ann)
    store.submit(ann, again["item_id"], choice="a")  # right, once it knows
    assert store.quality()["ann"]["gold_agreement"] == 0.0


def test_gold_order_is_each_persons(tmp_path):
    store = gold_store(tmp_path, golds=7, gold_rate=1.0, redundancy=20)
    orders = []
    for name in ("ann", "bob", "cat", "dan"):
        who = person(store, name)
        order = []
        for _ in range(8):
            item = store.next_assignment(who)
            order.append(item["prompt"])
            store.submit(who, item["item_id"], choice="a")
        orders.append(order)
    assert all(sorted(order) == sorted(orders[0]) for order in orders)  # every gold item, once
    assert len({tuple(order) for order in orders}) > 1  # not one order for everyone


def test_an_item_passed_on_cannot_be_labelled(client, store):
    ann = bearer(store.add_user("ann"))
    item = client.post("/api/next", headers=ann).json()
    skipped = client.post(
        "/api/skip", headers=ann, json={"item_id": item["item_id"], "reason": "x"}
    )
    assert skipped.status_code == 200
    late = client.post("/api/labels", headers=ann, json={"item_id": item["item_id"], "choice": "a"})
    assert late.status_code == 409 and "passed on" in late.json()["detail"]
    assert client.get("/api/labels", headers=ann).json() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://localhost:9999"},  # another port of the same host: the same site
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_request_from_another_site_changes_nothing(client, store, headers):
    token = store.add_user("ann")
    browser = {
        "Cookie": "prefopt_session="
        + client.post("/api/login", json={"token": token}).cookies["prefopt_session"]
    }
    for method, path, body in (
        ("post", "/api/next", None),
        ("post", "/api/logout", None),
        ("post", "/api/login", {"token": token}),
    ):
        response = getattr(client, method)(path, headers={**browser, **headers}, json=body)
        assert response.status_code == 403, (path, response.text)
    assert client.get("/api/me", headers=browser).status_code == 200  # still logged in
    assert client.post("/api/next", headers=browser).status_code in (200, 204)
    # the browser's word counts where it gives one (a proxy may have rewritten Host)
    same = {"Origin": "https://labels.example", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/logout", headers={**browser, **same}).status_code == 200


def test_failed_logins_are_rate_limited_per_address_and_overall(store):
    limiter = FailedLogins(per_address=3, overall=5, window=60.0)
    client = TestClient(create_app(store, failed_logins=limiter), base_url="http://localhost")
    token = store.add_user("ann")
    for _ in range(3):
        assert client.post("/api/login", json={"token": "guess"}).status_code == 401
    limited = client.post("/api/login", json={"token": token})  # even the right token, for now
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "too many failed logins" in limited.json()["detail"]
    other = TestClient(
        create_app(store, failed_logins=limiter),
        base_url="http://localhost",
        client=("10.0.0.2", 1),
    )
    for _ in range(2):
        assert other.post("/api/login", json={"token": "guess"}).status_code == 401
    assert other.post("/api/login", json={"token": token}).status_code == 429  # 5 failures in all


def test_look_alike_names_are_one_person(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'labels.db'}")
    store.add_user("ann")
    for alike in ("\u0430nn", "\u0430\u0578\u0578"):  # a Cyrillic а; and Armenian ո for n
        with pytest.raises(LabelError, match="looks like 'ann'"):
            store.add_user(alike)
    store.add_user("anna")  # different, not alike


def test_secure_cookies_whatever_the_request_says(store):
    token = store.add_user("ann")
    plain = TestClient(create_app(store), base_url="http://labels.example")
    assert (
        "secure"
        not in plain.post("/api/login", json={"token": token}).headers["set-cookie"].lower()
    )
    forced = TestClient(create_app(store, secure_cookies=True), base_url="http://labels.example")
    assert (
        "secure" in forced.post("/api/login", json={"token": token}).headers["set-cookie"].lower()
    )
