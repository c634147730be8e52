"""The labelling server under load, and killed mid-run: a real `prefopt label serve` process,
20 concurrent clients over loopback."""

import concurrent.futures
import threading

import httpx
import pytest

from label_helpers import Server, write_items
from prefopt.label.store import Store

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them

CLIENTS, ITEMS, REDUNDANCY = 20, 1000, 2  # 2,000 labels in all


def annotate(url: str, token: str, stop: threading.Event | None = None) -> dict:
    """Label until nothing is left; returns acknowledged label ids and any 5xx or odd answers."""
    acknowledged, problems = [], []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        while not (stop and stop.is_set()):
            try:
                item = client.post("/api/next")
                if item.status_code == 204:
                    break
                if item.status_code != 200:
                    problems.append((item.status_code, item.text))
                    break
                body = item.json()
                answer = {"choice": "a"} if body["kind"] == "pair" else {"ranking": [1, 2, 3, 4]}
                sent = client.post("/api/labels", json={"item_id": body["item_id"], **answer})
            except httpx.TransportError:
                break  # the server is gone
            if sent.status_code != 201:
                problems.append((sent.status_code, sent.text))
                break
            acknowledged.append(sent.json()["id"])
    return {"acknowledged": acknowledged, "problems": problems}


def setup(tmp_path, items: int):
    path = write_items(
        tmp_path / "items.jsonl",
        [{"prompt": f"p{i}", "completions": [f"a{i}", f"b{i}"]} for i in range(items)],
    )
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    tokens = [store.add_user(f"annotator{i}") for i in range(CLIENTS)]
    return path, db, tokens


def run_clients(url, tokens, stop=None):
    with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
        return list(pool.map(lambda token: annotate(url, token, stop), tokens))


def test_20_clients_store_exactly_2000_labels(tmp_path):
    path, db, tokens = setup(tmp_path, ITEMS)
    server = Server(path, db, "--redundancy", str(REDUNDANCY))
    try:
        results = run_clients(server.url, tokens)
    finally:
        server.stop()
    assert [p for r in results for p in r["problems"]] == []
    acknowledged = [i for r in results for i in r["acknowledged"]]
    labels = Store(db).labels()
    assert len(acknowledged) == len(set(acknowledged)) == len(labels) == ITEMS * REDUNDANCY
    # no duplicates
    assert len({(lab["item_id"], lab["annotator"]) for lab in labels}) == len(labels)
    per_item = {}
    for lab in labels:
        per_item[lab["item_id"]] = per_item.get(lab["item_id"], 0) + 1
    assert set(per_item.values()) == {REDUNDANCY}


def test_killing_the_server_loses_no_acknowledged_label(tmp_path):
    path, db, tokens = setup(tmp_path, ITEMS)
    server = Server(path, db)
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_clients, server.url, tokens, stop)
        while len(Store(db).labels()) < 200:
            threading.Event().wait(0.05)
        server.kill()  # SIGKILL mid-run: no shutdown, no flush
        results = running.result()
    acknowledged = {i for r in results for i in r["acknowledged"]}
    assert len(acknowledged) >= 200 - CLIENTS  # a label can be committed before its answer arrives
    restarted = Server(path, db)  # serving the same items again adds nothing and loses nothing
    try:
        stored = {lab["id"] for lab in Store(db).labels()}
        assert acknowledged <= stored
        assert len(stored) - len(acknowledged) <= len(tokens)  # at most one in flight per client
        more = annotate(restarted.url, tokens[0])
        assert more["problems"] == [] and len(more["acknowledged"]) > 0
    finally:
        restarted.stop()
    assert len(Store(db).labels()) == len(stored) + len(more["acknowledged"])
    assert Store(db).counts()["items"] == ITEMS


def test_a_read_does_not_wait_on_another_writers_lock(tmp_path):
    """While another process's write transaction holds SQLite's write lock for 3 s, who-am-I,
    progress and the statistics answer at once (they read the last commit)."""
    import subprocess
    import sys
    import time

    from label_helpers import item_rows, write_items
    from prefopt.data import load_records
    from prefopt.label.store import Store

    db = tmp_path / "labels.db"
    store = Store(f"sqlite:///{db}")
    store.add_items(
        load_records(
            write_items(tmp_path / "items.jsonl", item_rows()), require_scores=False
        ).records
    )
    ann = store.user_for_token(token := store.add_user("ann"))
    script = tmp_path / "hold.py"
    script.write_text(
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute('UPDATE items SET priority = 1 WHERE id = 1')\n"
        "print('locked', flush=True)\n"
        "time.sleep(3)\n"
        "c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        assert store.user_for_token(token).name == "ann"
        assert store.progress(ann)["items"] == 5 and store.counts()["items"] == 5
        assert time.perf_counter() - started < 1.0  # not the 3 s the writer holds its lock
    finally:
        holder.wait(timeout=30)
    store.close()
