"""Requests are bounded before they cost anything: an oversized body is refused with 413 from its
declared length or while it streams, before parsing and before the token is checked, and a real
server stays responsive with bounded memory while several arrive at once."""

import threading
import time

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from label_helpers import Server
from prefopt.label.app import create_app
from prefopt.label.store import Store


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(Store(f"sqlite:///{tmp_path / 'labels.db'}"), max_body_bytes=1000))


def test_an_oversized_body_is_refused_before_authentication(client):
    declared = client.post(
        "/api/labels", content=b"x" * 5000, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and declared.json() == {
        "detail": "the request body is over 1000 bytes",
        "field": "body",
    }
    # no length: chunked
    streamed = client.post("/api/labels", content=(b"x" * 400 for _ in range(10)))
    assert streamed.status_code == 413
    # small: on to auth
    assert client.post("/api/labels", json={"item_id": 1, "choice": "a"}).status_code == 401


@pytest.mark.slow
def test_a_real_server_stays_responsive_and_bounded_under_large_bodies(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    Store(db)
    server = Server(None, db)
    process = psutil.Process(server.process.pid)
    base = process.memory_info().rss
    peak, results, latencies = [base], [], []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    def flood():
        def body():  # 256 MiB, no declared length, refused once past the limit
            for _ in range(4096):
                yield b"x" * 65536

        try:
            results.append(
                httpx.post(server.url + "/api/labels", content=body(), timeout=60).status_code
            )
        except httpx.TransportError:  # the server closed the connection after its 413
            results.append("closed")

    try:
        threading.Thread(target=watch, daemon=True).start()
        floods = [threading.Thread(target=flood) for _ in range(4)]
        for thread in floods:
            thread.start()
        for _ in range(10):
            started = time.perf_counter()
            assert httpx.get(server.url + "/login", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - started)
        for thread in floods:
            thread.join(timeout=120)
    finally:
        stop.set()
        server.stop()
    assert all(r in (413, "closed") for r in results) and len(results) == 4
    assert (peak[0] - base) / 2**20 < 100, f"RSS grew by {(peak[0] - base) / 2**20:.0f} MB"
    assert max(latencies) < 1.0, latencies
    print(
        f"RSS growth {(peak[0] - base) / 2**20:.1f} MB, login latency max {max(latencies) * 1000:.0f} ms"
    )
