"""The labelling store on a real PostgreSQL server, started by the test from Debian's
postgresql package (skipped, with the reason, where that is not installed)."""

import pytest
from test_label_reliability import annotate, run_clients

from label_helpers import INITDB, NO_POSTGRES, Server, item_rows, write_items
from prefopt.data import load_records
from prefopt.label.export import export_rows
from prefopt.label.store import Store

pytestmark = pytest.mark.skipif(not INITDB, reason=NO_POSTGRES)


@pytest.fixture
def store(postgres_url):
    import sqlalchemy as sa

    store = Store(postgres_url)
    with store.engine.begin() as connection:  # a clean slate per test, schema kept
        connection.execute(
            sa.text("TRUNCATE labels, assignments, users, items RESTART IDENTITY CASCADE")
        )
    return store


def test_the_store_works_the_same_on_postgres(store, tmp_path):
    records = load_records(
        write_items(tmp_path / "items.jsonl", item_rows()), require_scores=False
    ).records
    assert store.add_items(records) == 5 and store.add_items(records) == 0
    ann = store.user_for_token(store.add_user("ann"))
    store.set_priorities({5: 1.0})
    first = store.next_assignment(ann)
    assert first["item_id"] == 5 and first["kind"] == "ranking"
    store.submit(ann, 5, ranking=[1, 2, 2, 4], comment="'; DROP TABLE labels; --")
    for _ in range(4):
        store.submit(ann, store.next_assignment(ann)["item_id"], choice="b")
    assert store.next_assignment(ann) is None
    labels = store.labels()
    assert labels[0]["ranks"] == [1, 2, 2, 4] and labels[0]["comment"] == "'; DROP TABLE labels; --"
    rows, _ = export_rows(labels, "pairs")
    assert len(load_records(write_items(tmp_path / "pairs.jsonl", rows)).records) == len(rows) == 9


@pytest.mark.slow
def test_20_clients_on_postgres_store_every_label_once(store, tmp_path):
    path = write_items(
        tmp_path / "items.jsonl",
        [{"prompt": f"p{i}", "completions": [f"a{i}", f"b{i}"]} for i in range(400)],
    )
    tokens = [store.add_user(f"annotator{i}") for i in range(20)]
    server = Server(path, store.url, "--redundancy", "2")
    try:
        results = run_clients(server.url, tokens)
        assert annotate(server.url, tokens[0])["acknowledged"] == []  # nothing left
    finally:
        server.stop()
    assert [p for r in results for p in r["problems"]] == []
    labels = store.labels()
    assert len(labels) == sum(len(r["acknowledged"]) for r in results) == 800
    assert len({(lab["item_id"], lab["annotator"]) for lab in labels}) == 800


def test_identical_concurrent_submissions_store_one_label(store, tmp_path):
    """The same label sent 8 times at once through the real server on PostgreSQL: one 201, every
    other a 409 naming the item, never a 500."""
    import concurrent.futures

    import httpx

    path = write_items(tmp_path / "items.jsonl", [{"prompt": "p", "completions": ["a", "b"]}])
    token = store.add_user("ann")
    server = Server(path, store.url)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        item = httpx.post(server.url + "/api/next", headers=headers, timeout=30).json()

        def send(_):
            return httpx.post(
                server.url + "/api/labels",
                headers=headers,
                timeout=30,
                json={"item_id": item["item_id"], "choice": "a"},
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, range(8)))
    finally:
        server.stop()
    codes = sorted(response.status_code for response in responses)
    assert codes == [201] + [409] * 7, [r.text for r in responses]
    assert all(r.json()["field"] == "item_id" for r in responses if r.status_code == 409)
    assert len(store.labels()) == 1
