"""`prefopt label …` through the real entry point: tokens, clear errors, export."""

import json

import pytest

from label_helpers import free_port, item_rows, write_items
from prefopt.label.store import Store

pytestmark = pytest.mark.slow  # real processes: make test-fast skips them


def test_add_people_prints_a_token_once_and_stores_only_its_hash(prefopt_cli, tmp_path):
    db = tmp_path / "labels.db"
    # a database is never made unasked
    refused = prefopt_cli("label", "add-annotator", "ann", "--db", db)
    assert refused.returncode == 1 and f"{db}: no such database; add --create" in refused.stderr
    assert not db.exists()
    done = prefopt_cli("label", "add-annotator", "ann", "--db", db, "--create")
    assert done.returncode == 0, done.stderr
    assert f"created the label database {db}" in done.stdout
    token = done.stdout.strip().splitlines()[-1]
    store = Store(f"sqlite:///{db}")
    assert store.user_for_token(token).role == "annotator"
    assert token.encode() not in db.read_bytes()
    admin = prefopt_cli("label", "add-admin", "boss", "--db", db)
    assert store.user_for_token(admin.stdout.strip().splitlines()[-1]).role == "admin"
    again = prefopt_cli("label", "add-annotator", "ann", "--db", db)
    assert (
        again.returncode == 1
        and "already exists" in again.stderr
        and "Traceback" not in again.stderr
    )


def test_bad_items_and_bad_databases_are_one_clear_line(prefopt_cli, tmp_path):
    db = str(tmp_path / "labels.db")
    missing = prefopt_cli(
        "label", "serve", "--items", tmp_path / "nope.jsonl", "--db", db, "--create"
    )
    assert (
        missing.returncode == 1
        and "nope.jsonl" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    bad = write_items(
        tmp_path / "bad.jsonl", [*item_rows(2, 0), {"prompt": "p", "completions": ["only one"]}]
    )
    refused = prefopt_cli("label", "serve", "--items", bad, "--db", db)
    assert refused.returncode == 1 and "bad.jsonl, row 3" in refused.stderr, refused.stderr
    assert Store(f"sqlite:///{db}").counts()["items"] == 0  # nothing half-loaded
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    unreachable = prefopt_cli("label", "add-annotator", "x", "--db", url)
    assert (
        unreachable.returncode == 1
        and "database:" in unreachable.stderr
        and "Traceback" not in unreachable.stderr
    )


def test_export_of_a_database_that_does_not_exist_fails_and_keeps_the_output(prefopt_cli, tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text('{"kept": true}\n')
    done = prefopt_cli("label", "export", "--db", tmp_path / "missing.db", "--out", out)
    assert (
        done.returncode == 1
        and "missing.db: no such database" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert out.read_text() == '{"kept": true}\n' and not (tmp_path / "missing.db").exists()


def test_export_writes_training_data(prefopt_cli, tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    from prefopt.data import load_records

    store.add_items(
        load_records(
            write_items(tmp_path / "items.jsonl", item_rows(3, 1)), require_scores=False
        ).records
    )
    ann = store.user_for_token(store.add_user("ann"))
    for answer in ({"choice": "a"}, {"choice": "b"}, {"choice": "tie"}, {"ranking": [2, 1, 4, 3]}):
        store.submit(ann, store.next_assignment(ann)["item_id"], **answer)
    wrong = prefopt_cli(
        "label", "export", "--db", db, "--format", "csv", "--out", tmp_path / "x.jsonl"
    )
    assert wrong.returncode == 2 and "pairs, lists" in wrong.stderr
    for fmt, count in (("pairs", 2 + 6), ("lists", 3)):
        out = tmp_path / f"{fmt}.jsonl"
        done = prefopt_cli("label", "export", "--db", db, "--format", fmt, "--out", out)
        assert done.returncode == 0, done.stderr
        assert f"wrote {count} {fmt} rows" in done.stdout
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(load_records(out).records) == len(rows) == count
    # the items as Label Studio tasks: a pair for its Pairwise template, the list for its Ranker
    done = prefopt_cli("label", "export", "--db", db, "--format", "label-studio", "--out",
                       tmp_path / "tasks.json")  # fmt: skip
    assert done.returncode == 0 and "wrote 4 Label Studio tasks" in done.stdout, done.stderr
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks[0]["data"].keys() == {"prompt", "answer1", "answer2"}
    assert len(tasks[-1]["data"]["items"]) == 4


def test_revoke_and_rotate_end_sessions_and_replace_the_token(prefopt_cli, tmp_path):
    db = tmp_path / "labels.db"
    store = Store(f"sqlite:///{db}")
    token = store.add_user("ann")
    session = store.start_session(store.user_for_token(token))
    done = prefopt_cli("label", "revoke", "ann", "--db", db)
    assert done.returncode == 0 and "every session ended and the token disabled" in done.stdout, (
        done.stderr
    )
    assert store.user_for_token(token) is None and store.user_for_session(session) is None
    rotated = prefopt_cli("label", "rotate", "Ann", "--db", db)
    assert rotated.returncode == 0, rotated.stderr
    assert store.user_for_token(rotated.stdout.strip().splitlines()[-1]).name == "ann"
    unknown = prefopt_cli("label", "rotate", "zoe", "--db", db)
    assert (
        unknown.returncode == 1
        and "no person named 'zoe'" in unknown.stderr
        and "Traceback" not in unknown.stderr
    )
