"""`prefopt loop` with people as the oracle, on the real label server: the chosen lists reach the
store with their acquisition scores as priorities, labels given after a round's deadline (while
the loop trains) join the next round's data once, and `on_deadline: stop` stops with a message
that keeps everything, `--resume` waiting again."""

import json

import httpx
import pytest
import sqlalchemy as sa

from label_helpers import Server
from prefopt.errors import OracleError
from prefopt.label.store import Store
from prefopt.loop import LoopConfig, loop
from tiny import write_jsonl

pytestmark = pytest.mark.slow  # a real server process


def settings(tiny_model, tmp_path, db, **overrides):
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"prompt": f"question {i}: apple"} for i in range(40)]
    )
    return LoopConfig(
        **{
            "model": str(tiny_model),
            "prompts": str(pool),
            "oracle": "people",
            "oracle_options": {"db": db, "deadline_minutes": 0.005, "poll_seconds": 0.05},
            "rounds": 1,
            "labels_per_round": 3,
            "candidates_per_label": 2,
            "k": 3,
            "max_new_tokens": 6,
            "train": {
                "loss": "plackett_luce",
                "lora": True,
                "learning_rate": 1e-3,
                "max_steps": 2,
                "batch_size": 2,
            },
            "precision": "fp32",
            "output_dir": str(tmp_path / "run"),
            **overrides,
        }
    )


def label_everything(url: str, token: str) -> int:
    """An annotator ranks every item the server hands out, the first completion best."""
    done = 0
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        while (item := client.post("/api/next")).status_code == 200:
            body = item.json()
            # in item order, whatever was shown
            ranks = list(range(1, len(body["completions"]) + 1))
            answer = {"choice": "a"} if body["kind"] == "pair" else {"ranking": ranks}
            assert (
                client.post("/api/labels", json={"item_id": body["item_id"], **answer}).status_code
                == 201
            )
            done += 1
    return done


def test_labels_given_after_a_deadline_join_the_next_round_once(tiny_model, tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    token = Store(db).add_user("ann")
    first = loop(settings(tiny_model, tmp_path, db))  # nobody labels: every chosen list abstains
    assert first[0]["labels"] == 0 and (tmp_path / "run" / "round-0" / "train.skipped").exists()
    round_0 = tmp_path / "run" / "round-0"
    scores = json.loads((round_0 / "acquisition.json").read_text())["scores"]
    # the 3 chosen, then the next 3 by score
    asked = json.loads((round_0 / "asked.json").read_text())
    with Store(db).engine.connect() as connection:
        priorities = sorted(
            row[0] for row in connection.execute(sa.text("SELECT priority FROM items"))
        )
    assert len(asked) == 6 and priorities == sorted(scores[i] for i in asked)  # the queue's order
    server = Server(None, db)
    try:
        # while the loop is away (training, in a real run)
        labelled = label_everything(server.url, token)
    finally:
        server.stop()
    assert labelled == 6
    records = loop(settings(tiny_model, tmp_path, db, rounds=3), resume=True)
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "round-1" / "labels.jsonl").read_text().splitlines()
    ]
    assert records[1]["late_labels"] == 6 == len(rows) and {
        row["late_from_round"] for row in rows
    } == {0}
    assert (tmp_path / "run" / "round-1" / "train" / "model").exists()  # trained on them
    assert records[2]["late_labels"] == 0  # each once


def test_on_deadline_stop_stops_with_a_message_and_resume_waits_again(tiny_model, tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    config = settings(
        tiny_model,
        tmp_path,
        db,
        oracle_options={
            "db": db,
            "deadline_minutes": 0.005,
            "poll_seconds": 0.05,
            "on_deadline": "stop",
        },
    )
    with pytest.raises(
        OracleError, match=r"people: the deadline \(0.005 min\) passed with 0 of 3 labels; stopped"
    ):
        loop(config)
    folder = tmp_path / "run" / "round-0"
    assert (folder / "acquisition.json").exists() and not (folder / "labels.jsonl").exists()
    token = Store(db).add_user("ann")
    server = Server(None, db)
    try:
        assert label_everything(server.url, token) == 3
    finally:
        server.stop()
    records = loop(config, resume=True)
    assert records[0]["labels"] == 3 and (folder / "train" / "model").exists()
