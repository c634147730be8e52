"""Every oracle answer, stored: a SQLite file keyed by the oracle's identity (name, options, model
fingerprint, template) and the exact texts asked about, so a rerun or a resumed loop never pays
twice. Abstentions are not stored (a later run asks again), and neither are the answers of an
oracle that samples, unless asked."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from prefopt.oracles.base import Judgement, ListToJudge, Oracle


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, oracle TEXT NOT NULL, "
            "answer TEXT NOT NULL, created REAL NOT NULL)"
        )
        self.db.commit()

    @staticmethod
    def key(oracle: Oracle, item: ListToJudge) -> str:
        # meta: how it was generated
        asked = {
            "identity": oracle.identity(),
            "prompt": item.prompt,
            "completions": list(item.completions),
            "record": {k: v for k, v in item.record.items() if k != "meta"},
        }
        return hashlib.sha256(
            json.dumps(asked, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()

    def get(self, keys: list[str]) -> dict[str, Judgement]:
        found = {}
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found |= {key: Judgement.from_json(json.loads(answer)) for key, answer in rows}
        return found

    def put(self, oracle: Oracle, answers: dict[str, Judgement]) -> None:
        rows = [
            (key, oracle.name, json.dumps(judgement.to_json()), time.time())
            for key, judgement in answers.items()
            if judgement.abstained is None
        ]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()


def judge(
    oracle: Oracle,
    lists: list[ListToJudge],
    cache: AnswerCache | None,
    *,
    cache_sampled: bool = False,
) -> tuple[list[Judgement], int]:
    """The oracle's judgements of `lists`, from the cache where it has them; returns them and how
    many came from the cache. New answers are stored before this returns."""
    if cache is None or (not oracle.deterministic and not cache_sampled):
        return oracle.judge(lists), 0
    keys = [AnswerCache.key(oracle, item) for item in lists]
    found = cache.get(keys)
    missing = [i for i, key in enumerate(keys) if key not in found]
    if missing:
        fresh = oracle.judge([lists[i] for i in missing])
        answers = {keys[i]: judgement for i, judgement in zip(missing, fresh, strict=True)}
        cache.put(oracle, answers)
        found |= answers
    return [found[key] for key in keys], len(lists) - len(missing)
