"""`prefopt loop` on two CPU processes (torchrun): each samples every other prompt of a round with
the generators seeded by (seed, prompt, k), the main process acquires, labels and evaluates while
the other waits, and both train; the samples and scores are those of one process."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from prefopt.loop import LoopConfig, loop
from tiny import on_two_processes, write_jsonl

pytestmark = pytest.mark.slow


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_answers(a: list[dict], b: list[dict]) -> None:
    """The same answers and scores; a log-prob rounds alike only up to the batch it was in."""
    strip = lambda row: {**row, "meta": {k: v for k, v in row["meta"].items() if k != "logps"}}
    assert [strip(row) for row in a] == [strip(row) for row in b]
    for x, y in zip(a, b, strict=True):
        assert x["meta"]["logps"] == pytest.approx(y["meta"]["logps"], rel=1e-5)


def without_timings(row: dict) -> dict:
    return {
        k: v for k, v in row.items() if k not in ("seconds", "overhead_seconds", "overhead_share")
    }


def test_two_processes_sample_and_score_as_one(tiny_model, tmp_path):
    (tmp_path / "short.py").write_text(
        "def short(prompt, completion, record):\n    return -len(completion)\n"
    )
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": f"question {i}"} for i in range(16)])
    heldout = write_jsonl(
        tmp_path / "heldout.jsonl", [{"prompt": f"held out {i}"} for i in range(3)]
    )
    settings = dict(model=str(tiny_model), prompts=str(pool), heldout=str(heldout),
                    oracle="verifier", oracle_options={"function": f"{tmp_path}/short.py:short"},
                    rounds=2, labels_per_round=3, candidates_per_label=2, k=3, max_new_tokens=6,
                    train={"loss": "plackett_luce", "max_steps": 2, "batch_size": 2,
                           "learning_rate": 1e-3},
                    precision="fp32")  # fmt: skip
    loop(LoopConfig(**settings, output_dir=str(tmp_path / "one")))
    (tmp_path / "two.yaml").write_text(
        yaml.safe_dump({**settings, "output_dir": str(tmp_path / "two")})
    )
    result = subprocess.run(on_two_processes("loop", str(tmp_path / "two.yaml")),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("round 2:") == 1  # the main process reports, once
    one, two = tmp_path / "one", tmp_path / "two"
    assert_same_answers(rows(two / "initial-answers.jsonl"), rows(one / "initial-answers.jsonl"))
    # round 0: the initial policy samples; the lists, their scores and the labels alike
    assert_same_answers(rows(two / "round-0" / "generations.jsonl"),
                        rows(one / "round-0" / "generations.jsonl"))  # fmt: skip
    labels = [(row["prompt"], row["completions"], row["scores"]) for row in
              rows(two / "round-0" / "labels.jsonl")]  # fmt: skip
    assert labels == [(row["prompt"], row["completions"], row["scores"]) for row in
                      rows(one / "round-0" / "labels.jsonl")]  # fmt: skip
    first_one, first_two = rows(one / "rounds.jsonl")[0], rows(two / "rounds.jsonl")[0]
    assert without_timings(first_two)["labels"] == without_timings(first_one)["labels"]
    assert len(rows(two / "rounds.jsonl")) == 2
    assert (two / "round-1" / "train" / "merged").is_dir()
