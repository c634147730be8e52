"""`prefopt demo --people`: the label app serves the loop's store over loopback, a person (here a
thread speaking HTTP to the real server) ranks the lists the loop asks about, and the loop trains
on those rankings while the verifier measures the held-out answers."""

import socket
import threading
import time

import httpx
import pytest
from test_demo import SMALL_LOOP, SMALL_TASK

from prefopt.demo import demo
from prefopt.label.store import Store

pytestmark = pytest.mark.slow  # a real server over loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def person(base: str, token_file, stop: threading.Event, ranked: list) -> None:
    """Logs in with the demo's token and ranks every list it is handed: shorter answers first."""
    while not token_file.exists() and not stop.is_set():
        time.sleep(0.05)
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post("/api/next")
            except (
                httpx.TransportError
            ):  # the app starts just after the token is written, and stops first
                time.sleep(0.1)
                continue
            if response.status_code == 204:
                time.sleep(0.1)
                continue
            item = response.json()
            shown, order = item["completions"], item["display_order"]
            in_item_order = [shown[order.index(i)] for i in range(len(order))]
            lengths = sorted({len(text) for text in in_item_order})
            ranking = [1 + lengths.index(len(text)) for text in in_item_order]
            assert (
                client.post(
                    "/api/labels", json={"item_id": item["item_id"], "ranking": ranking}
                ).status_code
                == 201
            )
            ranked.append(item["item_id"])


def test_a_person_in_the_browser_is_the_oracle(tiny_model, tmp_path):
    port, stop, ranked, done = free_port(), threading.Event(), [], {}
    labeller = threading.Thread(
        target=person,
        args=(f"http://127.0.0.1:{port}", tmp_path / "people-token.txt", stop, ranked),
        daemon=True,
    )
    labeller.start()
    try:
        done["result"] = demo(
            tmp_path,
            model=str(tiny_model),
            people=True,
            port=port,
            task_sizes=SMALL_TASK,
            loop_settings={**SMALL_LOOP, "rounds": 1, "labels_per_round": 2},
        )
    finally:
        stop.set()
        labeller.join(timeout=10)
    result = done["result"]
    assert len(ranked) >= 2  # the loop waited for the person's rankings
    rounds = result.arms[0].rounds
    assert rounds[0]["labels"] >= 1 and result.arms[0].config.oracle == "people"
    assert "score" in rounds[0]["eval"]  # measured by the verifier, not asked of the person
    assert len(Store(f"sqlite:///{tmp_path / 'labels.db'}").labels()) == len(ranked)
    assert (tmp_path / "people-token.txt").stat().st_mode & 0o077 == 0
    with pytest.raises(httpx.TransportError):  # the app stops with the demo
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
